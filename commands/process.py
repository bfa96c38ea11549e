"""`rollouts process`: re-process existing rollouts (our runs, rollout JSONL/Parquet, NeMo Gym output) into training
files."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator

from commands import command_help
from commands.collect import config_data, objectives_of
from commands.errors import EXIT_OK, EXIT_RUN_FAILED, error, usage_guard
from commands.options import add_model_options, validated
from rollouts.errors import ConfigError
from rollouts.options import Cli
from rollouts.process.config import FORMAT_HELP, Objective, ProcessConfig, RolloutFilesConfig, TrainConfig

if TYPE_CHECKING:
    from rich.table import Table

DESCRIPTION = """Re-process existing rollouts into training files, without regenerating them.

INPUT is a run directory (manifest.json or rollouts/), a rollout JSONL or Parquet file (ours or NeMo Gym's), or a
glob; local or any fsspec URL such as s3://bucket/runs/r1. Outputs go to OUT/<objective>/ with a data card.
"""


def _formats_epilog() -> str:
    return "formats (--format [objective:]name; the first listed per objective are defaults):\n" + "\n".join(
        f"  {key:<28} {text}" for key, text in FORMAT_HELP.items()
    )


class ProcessCommand(RolloutFilesConfig):
    """Options of `rollouts process`: INPUT, --out and --storage-options as `rollouts tokens` has them; the filter and
    format options are TrainConfig's, shared with `collect`."""

    objective: list[Objective] = Field(description="rl, sft or dpo; repeat or comma-separate")
    workdir: Annotated[str | None, Cli(metavar="URL")] = Field(
        None, description="where the intermediate Parquet frame goes (default: a temp dir)"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)

    _objectives = field_validator("objective", mode="before")(lambda cls, v: objectives_of(v))

    def configs(self) -> list[ProcessConfig]:
        return [self.train.for_objective(o) for o in self.objective]


def add_process_parser(subparsers: Any) -> None:
    """Register `process`; the parsed args carry func, which runs it."""
    parser = subparsers.add_parser(
        "process",
        help=command_help("process"),
        description=DESCRIPTION,
        epilog=_formats_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options = add_model_options(parser, ProcessCommand, command="process")
    parser.add_argument("--verbose", "-v", action="store_true", help="print tracebacks of errors")
    parser.set_defaults(func=run_process_command, options=options)


def build_command(args: argparse.Namespace) -> ProcessCommand:
    return validated(ProcessCommand, config_data(args, args.options), args.options)


def _summary(results: list[Any]) -> Table:
    from rich.table import Table

    table = Table(title="rollouts process")
    for column in ("objective", "rollouts in", "bad rows", "groups in → out", "out"):
        table.add_column(column, justify="left" if column == "objective" else "right")
    for r in results:
        c = r.card
        table.add_row(
            r.objective,
            str(c.rows_in),
            str(c.bad_rows.count),
            f"{c.groups_in} → {c.groups_out}",
            f"{c.rows_out} {c.unit}",
        )
    return table


def run_process_command(args: argparse.Namespace) -> int:
    """Run `process` from parsed arguments; user errors print one clear line and return a non-zero code."""
    from rollouts.quality import require_known_checks
    from rollouts.training.api import process_many

    # Unlike `collect`, inputs that cannot be read are not a usage error here: only ConfigError exits 2.
    with usage_guard(getattr(args, "verbose", False), usage=(ConfigError,)) as guard:
        command = build_command(args)
        for objective in command.configs():
            require_known_checks(drop_unhealthy=objective.drop_unhealthy)
        results = process_many(
            command.inputs,
            command.configs(),
            command.out,
            storage_options=command.storage_options,
            workdir=command.workdir,
        )
    if guard.code:
        return guard.code
    from rich.console import Console

    out = Console()
    out.print(_summary(results))
    for r in results:
        drops = [*r.card.dropped, *r.card.group_drops, *r.card.pair_drops]
        if drops:
            out.print(
                f"{r.objective} dropped: " + ", ".join(f"{d.rule} {d.count}" for d in drops),
                highlight=False,
                soft_wrap=True,
            )
        for fmt, path in r.files.items():
            out.print(f"{r.objective}/{fmt}: {path} ({r.rows[fmt]} rows)", highlight=False, soft_wrap=True)
        out.print(f"{r.objective} data card: {r.card_markdown}", highlight=False, soft_wrap=True)
    empty = [r for r in results if r.card.rows_out == 0]
    for r in empty:
        error(f"{r.objective}: nothing written: {why_empty(r.card)}")
    return EXIT_RUN_FAILED if empty else EXIT_OK


def why_empty(card: Any) -> str:
    """Why an objective selected nothing, in the words a user acts on."""
    if card.rows_read == 0:
        return "the input has no rows"
    if card.rows_in == 0:
        return f"none of the {card.rows_read} rows could be read (see the data card's bad rows)"
    failed = sum(d.count for d in card.dropped if d.rule == "failed")
    if failed == card.rows_in:
        return (
            f"all {card.rows_in} rows are failed rollouts or rows without a model response: is the input a prompts "
            "file? `rollouts process` reads collected rollouts (run `rollouts collect` on prompts)"
        )
    drops = ", ".join(f"{d.rule} {d.count}" for d in [*card.dropped, *card.group_drops, *card.pair_drops])
    return f"every {card.unit[:-1]} was dropped by the rules ({drops}); loosen them, see the data card"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollouts")
    add_process_parser(parser.add_subparsers())
    args = parser.parse_args(["process", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)  # run_process_command, set as the subcommand's default
    return code

"""`rollouts check`: the rollout health checks on rollouts that already exist (a run folder, a rollouts JSONL, NeMo
Gym's output), with verdicts and a summary written beside them and a table of what fired."""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from commands import command_help
from commands.errors import EXIT_OK, EXIT_RUN_FAILED, error, usage_guard
from commands.options import add_model_options, build, validated
from rollouts.errors import ConfigError
from rollouts.options import Cli, field_of
from rollouts.process.config import RolloutFilesConfig
from rollouts.quality.config import QualityConfig

DESCRIPTION = """Check every rollout for what no trainer should see (empty completions, loops to the token limit,
leaked reasoning, malformed tool calls, repeated tool errors, miscounted tokens, identical groups, tasks that always
fail) and write OUT/quality/verdicts.jsonl (one verdict per rollout, with the checks that fired and their evidence)
and OUT/quality/summary.json. INPUT is a run folder (OUT defaults to it), a rollouts JSONL or a NeMo Gym output
folder; local or any fsspec URL. Exit 1 when more rollouts than --max-unhealthy-fraction are unhealthy."""


class CheckConfig(BaseModel):
    """Options of `rollouts check`: INPUT and --storage-options as `rollouts process` has them, the checks'
    thresholds as `rollouts collect` has them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Annotated[str, Cli(positional=True, metavar="INPUT")] = Field(
        description="run folder, rollouts JSONL or NeMo Gym output folder"
    )
    out: Annotated[str | None, Cli(metavar="URL")] = Field(
        None, description="where quality/ is written (default: INPUT when it is a run folder, else its folder)"
    )
    storage_options: dict[str, Any] = field_of(RolloutFilesConfig, "storage_options")
    quality: QualityConfig = Field(default_factory=QualityConfig)


def add_check_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help=command_help("check"), description=DESCRIPTION)
    options = add_model_options(parser, CheckConfig, command="check")
    parser.add_argument("--verbose", "-v", action="store_true", help="print tracebacks of errors")
    parser.set_defaults(func=run_check_command, options=options)


def _out(config: CheckConfig) -> str:
    if config.out:
        return config.out
    place = config.input.rstrip("/")
    return place if not place.endswith((".jsonl", ".json")) else place.rsplit("/", 1)[0] if "/" in place else "."


def run_check_command(args: argparse.Namespace) -> int:
    from rollouts.quality import check_path, require_known_checks, write_quality
    from rollouts.quality.engine import default_workers

    with usage_guard(args.verbose, usage=(ConfigError,)) as guard:
        config: CheckConfig = validated(CheckConfig, build(args, args.options), args.options)
        require_known_checks(config.quality)
        result = check_path(
            config.input, config.quality, storage_options=config.storage_options, workers=default_workers()
        )
        summary = result.summary()
        files = write_quality(result, _out(config), storage_options=config.storage_options, summary=summary)
    if guard.code:
        return guard.code
    from rich.console import Console
    from rich.table import Table

    out = Console()
    table = Table(title=f"rollouts check: {result.checked} rollouts checked")
    for column in ("check", "fired", "fraction"):
        table.add_column(column, justify="left" if column == "check" else "right")
    for check_id, info in summary["checks"].items():
        table.add_row(check_id, str(info["fired"]), f"{info['fraction']:.1%}")
    out.print(table)
    out.print(
        f"unhealthy: {result.count('unhealthy')} of {result.checked} ({result.unhealthy_fraction:.1%})",
        highlight=False,
    )
    for name, path in files.items():
        out.print(f"{name}: {path}", highlight=False, soft_wrap=True)
    limit = config.quality.max_unhealthy_fraction
    if limit is not None and result.unhealthy_fraction > limit:
        top = ", ".join(f"{check} {count}" for check, count in result.top_checks(3))
        error(f"{result.unhealthy_fraction:.1%} unhealthy, over --max-unhealthy-fraction {limit:g} (top: {top})")
        return EXIT_RUN_FAILED
    return EXIT_OK

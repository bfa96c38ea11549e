"""`rollouts process`: re-process existing rollouts (our runs, rollout JSONL/Parquet, NeMo Gym output) into training files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, RolloutsError
from .api import ProcessResult, process_many
from .config import FORMAT_HELP, FORMATS, OBJECTIVES, ProcessConfig

DESCRIPTION = """Re-process existing rollouts into training files, without regenerating them.

INPUT is a run directory (manifest.json or rollouts/), a rollout JSONL or Parquet file (ours or NeMo Gym's), or a
glob; local or any fsspec URL such as s3://bucket/runs/r1. Outputs go to OUT/<objective>/ with a data card.
"""


def _formats_epilog() -> str:
    return "formats (--format [objective:]name; the first listed per objective are defaults):\n" + "\n".join(
        f"  {key:<28} {text}" for key, text in FORMAT_HELP.items()
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="run directory, rollout file or glob")
    parser.add_argument("--objective", action="append", required=True, help="rl, sft or dpo; repeat or comma-separate")
    parser.add_argument("--out", required=True, metavar="URL", help="output directory (local path or fsspec URL)")
    parser.add_argument("--workdir", metavar="URL", help="where the intermediate Parquet frame goes (default: a temp dir)")
    parser.add_argument("--storage-options", type=json.loads, metavar="JSON", help="fsspec options, e.g. '{\"anon\": false}'")
    add_filter_arguments(parser)


def add_filter_arguments(parser: argparse.ArgumentParser, *, collect: bool = False) -> None:
    """The filter and format options, shared by `rollouts process` and `rollouts collect` (whose own --max-turns and
    --max-output-tokens drive generation, so there the SFT limits are --sft-max-turns / --sft-max-output-tokens)."""
    parser.add_argument("--format", action="append", dest="formats", default=[], metavar="[OBJ:]NAME", help="output format (repeatable)")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    rl = parser.add_argument_group("rl")
    rl.add_argument("--advantage-scale", choices=["group", "batch", "none"], default="group")
    rl.add_argument("--drop-uniform-groups", action="store_true", help="drop groups whose rewards are all equal")
    rl.add_argument("--uniform-tolerance", type=float, default=1e-6, metavar="TOL")
    rl.add_argument("--keep-mean-between", type=float, nargs=2, metavar=("LO", "HI"), help="keep groups with LO <= mean <= HI")
    sft = parser.add_argument_group("sft")
    sft.add_argument("--min-reward", type=float, default=1.0 if collect else None,
                     help="drop rollouts with a lower reward" + (" (default 1.0)" if collect else ""))
    sft.add_argument("--per-prompt", type=int, default=1, metavar="K", help="best-of-n: keep the top K of each prompt")
    sft.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicate completions (sft and dpo)")
    sft.add_argument("--sft-max-turns" if collect else "--max-turns", dest="sft_max_turns", type=int, metavar="N",
                     help="drop rollouts with more model turns")
    sft.add_argument("--sft-max-output-tokens" if collect else "--max-output-tokens", dest="sft_max_output_tokens",
                     type=int, metavar="N", help="drop rollouts with more output tokens")
    sft.add_argument("--keep-length-truncated", action="store_true", help="keep rollouts cut off by the token limit (sft and dpo)")
    dpo = parser.add_argument_group("dpo")
    dpo.add_argument("--pairing", choices=["best-worst", "all-pairs", "top-bottom-k"], default="best-worst")
    dpo.add_argument("--min-margin", type=float, default=0.0, help="minimum reward margin (a tie is never a pair)")
    dpo.add_argument("--top-k", type=int, default=2, metavar="K", help="k for top-bottom-k")
    dpo.add_argument("--max-pairs-per-prompt", type=int, metavar="N")
    dpo.add_argument("--max-length-ratio", type=float, metavar="R", help="drop pairs whose longer side is over R times the shorter")


def add_process_parser(subparsers: Any) -> None:
    """Register `process` on an argparse subparsers object; the parsed args carry func=run_process_command."""
    parser = subparsers.add_parser(
        "process",
        help="re-process rollouts into RL/SFT/DPO training files",
        description=DESCRIPTION,
        epilog=_formats_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run_process_command)


def parse_objectives_and_formats(args: argparse.Namespace) -> tuple[list[str], dict[str, list[str]]]:
    objectives: list[str] = []
    for value in args.objective:
        for name in (v.strip() for v in value.split(",") if v.strip()):
            if name not in OBJECTIVES:
                raise ConfigError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
            if name not in objectives:
                objectives.append(name)
    formats: dict[str, list[str]] = {o: [] for o in objectives}
    for value in args.formats:
        obj, _, name = value.rpartition(":")
        targets = [obj] if obj else [o for o in objectives if name in FORMATS[o]]
        if obj and obj not in objectives:
            raise ConfigError(f"--format {value}: objective {obj!r} was not requested")
        if not targets or any(name not in FORMATS[t] for t in targets):
            known = ", ".join(f"{o}:{f}" for o in objectives for f in FORMATS[o])
            raise ConfigError(f"--format {value}: not a format of {', '.join(objectives)} (known: {known})")
        for t in targets:
            formats[t].append(name)
    return objectives, formats


def filter_options(args: argparse.Namespace) -> dict[str, Any]:
    """ProcessConfig fields (all but objective and formats) from parsed filter arguments."""
    return {
        "skip_bad_rows": args.skip_bad_rows,
        "advantage_scale": args.advantage_scale,
        "drop_uniform_groups": args.drop_uniform_groups,
        "uniform_tolerance": args.uniform_tolerance,
        "keep_mean_between": tuple(args.keep_mean_between) if args.keep_mean_between else None,
        "min_reward": args.min_reward,
        "per_prompt": args.per_prompt,
        "drop_duplicates": not args.keep_duplicates,
        "max_turns": args.sft_max_turns,
        "max_output_tokens": args.sft_max_output_tokens,
        "keep_length_truncated": args.keep_length_truncated,
        "pairing": args.pairing,
        "min_margin": args.min_margin,
        "top_k": args.top_k,
        "max_pairs_per_prompt": args.max_pairs_per_prompt,
        "max_length_ratio": args.max_length_ratio,
    }


def build_configs(args: argparse.Namespace) -> list[ProcessConfig]:
    objectives, formats = parse_objectives_and_formats(args)
    common = filter_options(args)
    return [ProcessConfig(objective=o, formats=tuple(formats[o]), **common) for o in objectives]  # type: ignore[arg-type]


def _summary(results: list[ProcessResult]) -> Table:
    table = Table(title="rollouts process")
    for column in ("objective", "rollouts in", "bad rows", "groups in → out", "out"):
        table.add_column(column, justify="left" if column == "objective" else "right")
    for r in results:
        c = r.card
        table.add_row(r.objective, str(c.rows_in), str(c.bad_rows.count), f"{c.groups_in} → {c.groups_out}", f"{c.rows_out} {c.unit}")
    return table


def _problem(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {message}" if where else message


def _print_error(console: Console, message: str) -> None:
    console.print("[red]error:[/] ", end="")
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def run_process_command(args: argparse.Namespace) -> int:
    """Run `process` from parsed arguments; user errors print one clear line and return a non-zero code."""
    err = Console(stderr=True)
    try:
        configs = build_configs(args)
        results = process_many(args.inputs, configs, args.out, storage_options=args.storage_options, workdir=args.workdir)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        _print_error(err, f"invalid options: {problems}")
        return 2
    except ConfigError as exc:
        _print_error(err, exc.message)
        return 2
    except RolloutsError as exc:
        _print_error(err, exc.message)
        return 1
    out = Console()
    out.print(_summary(results))
    for r in results:
        drops = [*r.card.dropped, *r.card.group_drops, *r.card.pair_drops]
        if drops:
            out.print(f"{r.objective} dropped: " + ", ".join(f"{d.rule} {d.count}" for d in drops), highlight=False, soft_wrap=True)
        for fmt, path in r.files.items():
            out.print(f"{r.objective}/{fmt}: {path} ({r.rows[fmt]} rows)", highlight=False, soft_wrap=True)
        out.print(f"{r.objective} data card: {r.card_markdown}", highlight=False, soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rollouts process", description=DESCRIPTION, epilog=_formats_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_process_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

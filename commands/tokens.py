"""`rollouts tokens`: check the token contiguity of existing rollouts and write training token records."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from commands.errors import usage_guard
from rollouts.errors import ConfigError
from rollouts.tokens.samples import POLICIES

DESCRIPTION = """Check that every model call's prompt extends the previous call's prompt + generation, classify the
breaks, and write per-sample token records: OUT/tokens.parquet (input_ids, loss_mask, logprobs, reward, advantage,
group and rollout ids, sample index), OUT/nemo_rl.jsonl (NeMo RL message_log), OUT/verl.parquet (verl's prompt_ids,
response_ids, response_mask, response_logprobs) and a data card.

INPUT is a run directory, a rollout JSONL or Parquet file (ours or NeMo Gym's) or a glob; local or any fsspec URL.
"""
POLICY_HELP = ("at a break: splice = keep the generated ids, append only the next prompt's new tokens; split = start "
               "a new sample; truncate = keep the contiguous prefix; drop = leave the rollout out (default split)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="run directory, rollout file or glob")
    parser.add_argument("--out", required=True, metavar="URL", help="output directory (local path or fsspec URL)")
    parser.add_argument("--on-break", choices=POLICIES, default="split", dest="policy", help=POLICY_HELP)
    parser.add_argument("--tokenizer", metavar="PATH", help="a tokenizer.json (or a directory holding one) to classify "
                        "breaks by decoded text; without it, breaks are classified from the ids")
    parser.add_argument("--turn-end-id", type=int, metavar="ID", help="the end-of-turn token id splice matches "
                        "(default: the most common last generated id of each rollout)")
    parser.add_argument("--storage-options", type=json.loads, metavar="JSON", help="fsspec options, e.g. '{\"anon\": false}'")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    parser.add_argument("--advantage-scale", choices=["group", "batch", "none"], default="group")


def add_tokens_parser(subparsers: Any) -> None:
    """Register `tokens` on an argparse subparsers object; the parsed args carry func=run_tokens_command."""
    parser = subparsers.add_parser("tokens", help="check token contiguity and write training token records",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_tokens_command)


def load_tokenizer(spec: str) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a directory that holds one."""
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"--tokenizer {spec}: no tokenizer.json there (pass the file, or the model directory)")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises plain Exception for a bad file
        raise ConfigError(f"--tokenizer {spec}: not a tokenizers JSON file ({exc})") from exc


def run_tokens_command(args: argparse.Namespace) -> int:
    """Run `tokens` from parsed arguments: 0 on success, 2 for a usage error, 1 when the inputs cannot be processed."""
    from rollouts.process.config import ProcessConfig
    from rollouts.tokens.api import convert_token_records

    with usage_guard(getattr(args, "verbose", False), usage=(ConfigError,)) as guard:  # unreadable inputs: exit 1
        try:
            tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
            config = ProcessConfig(objective="rl", skip_bad_rows=args.skip_bad_rows, advantage_scale=args.advantage_scale)
            result = convert_token_records(args.inputs, args.out, args.policy, args.storage_options, tokenizer=tokenizer,
                                           turn_end_id=args.turn_end_id, config=config)
        except ValidationError as exc:
            raise ConfigError(f"invalid options: {exc.errors()[0]['msg']}") from None
    if guard.code:
        return guard.code
    out = Console()
    card = result.card
    check = card.check
    kinds = ", ".join(f"{k} {n}" for k, n in check.breaks_by_kind.items()) or "none"
    out.print(f"{card.rollouts_selected} rollouts: {check.contiguous} contiguous, {check.broken} broken "
              f"(breaks: {kinds}); {card.without_token_ids} without token ids", highlight=False, soft_wrap=True)
    actions = ", ".join(f"{k} {n}" for k, n in card.actions.items()) or "nothing to repair"
    out.print(f"--on-break {result.policy}: {actions}; {card.samples_out} samples, "
              f"{card.generated_tokens_out} of {card.generated_tokens_in} generated tokens", highlight=False, soft_wrap=True)
    for fmt, path in result.files.items():
        out.print(f"{fmt}: {path} ({result.rows[fmt]} rows)", highlight=False, soft_wrap=True)
    out.print(f"data card: {result.card_markdown}", highlight=False, soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollouts tokens", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_tokens_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

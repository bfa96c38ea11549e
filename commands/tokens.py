"""`rollouts tokens`: options generated from TokensConfig; check the token contiguity of existing rollouts, write
training token records and say what was found and written."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from commands import command_help
from commands.errors import EXIT_OK, EXIT_RUN_FAILED, error, usage_guard
from commands.options import add_model_options, build, validated
from rollouts.errors import ConfigError
from rollouts.tokens.config import TokensConfig

DESCRIPTION = """Check that every model call's prompt extends the previous call's prompt + generation, classify the
breaks, and write per-sample token records: OUT/tokens.parquet (input_ids, loss_mask, logprobs, reward, advantage,
group and rollout ids, sample index), OUT/nemo_rl.jsonl (NeMo RL message_log), OUT/verl.parquet (verl's prompt_ids,
response_ids, response_mask, response_logprobs) and a data card.

INPUT is a run directory, a rollout JSONL or Parquet file (ours or NeMo Gym's) or a glob; local or any fsspec URL.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options = add_model_options(parser, TokensConfig, command="tokens")
    parser.add_argument("--verbose", "-v", action="store_true", help="print tracebacks of errors")
    parser.set_defaults(func=run_tokens_command, options=options)


def add_tokens_parser(subparsers: Any) -> None:
    """Register `tokens` on an argparse subparsers object; the parsed args carry func=run_tokens_command."""
    parser = subparsers.add_parser(
        "tokens",
        help=command_help("tokens"),
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)


def tokens_config(args: argparse.Namespace) -> TokensConfig:
    return validated(TokensConfig, build(args, args.options), args.options)


def run_tokens_command(args: argparse.Namespace) -> int:
    """Run `tokens` from parsed arguments: 0 on success, 2 for a usage error, 1 when the inputs cannot be processed."""
    from rollouts.training.convert import convert_token_records

    with usage_guard(args.verbose, usage=(ConfigError,)) as guard:  # unreadable inputs: exit 1
        config = tokens_config(args)
        result = convert_token_records(
            config.inputs,
            config.out,
            config.on_break,
            config.storage_options,
            tokenizer=config.decoder(),
            turn_end_id=config.turn_end_id,
            config=config.process_config(),
        )
    if guard.code:
        return guard.code
    from rich.console import Console

    out = Console()
    card = result.card
    check = card.check
    kinds = ", ".join(f"{k} {n}" for k, n in check.breaks_by_kind.items()) or "none"
    out.print(
        f"{card.rollouts_selected} rollouts: {check.contiguous} contiguous, {check.broken} broken "
        f"(breaks: {kinds}); {card.without_token_ids} without token ids"
        + (f"; {card.bad_rows.count} bad rows skipped (see the data card)" if card.bad_rows.count else ""),
        highlight=False,
        soft_wrap=True,
    )
    actions = ", ".join(f"{k} {n}" for k, n in card.actions.items()) or "nothing to repair"
    out.print(
        f"--on-break {result.policy}: {actions}; {card.samples_out} samples, "
        f"{card.generated_tokens_out} of {card.generated_tokens_in} generated tokens",
        highlight=False,
        soft_wrap=True,
    )
    for fmt, path in result.files.items():
        out.print(f"{fmt}: {path} ({result.rows[fmt]} rows)", highlight=False, soft_wrap=True)
    out.print(f"data card: {result.card_markdown}", highlight=False, soft_wrap=True)
    if card.samples_out == 0:
        if card.rollouts_selected and card.without_token_ids == card.rollouts_selected:
            why = "no rollout carries token ids: collect with --return-tokens (a server that returns them) first"
        elif not card.rollouts_selected:
            why = "no rollout was selected (failed rollouts and bad rows are left out; see the data card)"
        else:
            why = f"--on-break {result.policy} dropped every rollout (see the data card)"
        error(f"nothing written: {why}")
        return EXIT_RUN_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rollouts tokens", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_tokens_command(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())

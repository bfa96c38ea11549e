"""`rollouts tune`: options generated from TuneConfig, the sweep's lines on stderr, the table and the advice on
stdout."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from commands import command_help
from commands.errors import EXIT_RUN_FAILED, error, usage_guard
from commands.options import add_model_options, build, validated
from rollouts.tune.sweep import StepResult, TuneConfig

DESCRIPTION = (
    "Find the --parallel where throughput stops rising: real prompts at 8, 16, 32, ... in flight, one "
    "bounded step each. Requests are sent without retries: a 429, a 5xx or a --request-timeout counts as an "
    "error of its step."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options = add_model_options(parser, TuneConfig, command="tune")
    parser.add_argument("--verbose", "-v", action="store_true", help="print tracebacks of errors")
    parser.set_defaults(func=run_tune_command, options=options)


def add_tune_parser(subparsers: Any) -> None:
    """Register `tune` on an argparse subparsers object; the parsed args carry func, which runs it."""
    parser = subparsers.add_parser("tune", help=command_help("tune"), description=DESCRIPTION)
    add_arguments(parser)


def tune_config(args: argparse.Namespace) -> TuneConfig:
    return validated(TuneConfig, build(args, args.options), args.options)


def _step_line(step: StepResult) -> None:
    print(
        f"  parallel {step.parallel:>5}: {step.throughput:8.1f} req/s, p50 {step.p50_ms or 0:.0f} ms, "
        f"p95 {step.p95_ms or 0:.0f} ms, errors {step.error_rate:.1%}",
        file=sys.stderr,
        flush=True,
    )


def run_tune_command(args: argparse.Namespace) -> int:
    """Run `tune` from parsed arguments: 0 with a recommendation, 2 for a usage error (bad options, unreachable
    server, no usable prompts), 1 when no request succeeded or the results cannot be written."""
    from rollouts.client.credentials import EndpointAuth
    from rollouts.client.model import check_endpoint
    from rollouts.tune.sweep import load_prompts, sweep, table, write_results

    with usage_guard(args.verbose, interrupted="interrupted: nothing was written") as guard:
        config = tune_config(args)
        auth = EndpointAuth(api_key=config.api_key())
        check_endpoint(config.model_url, auth, model=config.model if config.check_model else None)
        prompts = load_prompts(config.input, config.sample)
        print(
            f"tuning --parallel against {config.model_url} with {len(prompts)} prompts, "
            f"steps of <= {config.step_seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        steps, index, reason = asyncio.run(sweep(config, prompts, auth=auth, report=_step_line))
        if all(s.ok == 0 for s in steps):
            error(f"no request succeeded (errors: {steps[0].errors})")
            return EXIT_RUN_FAILED
        recommended = steps[index].parallel
        files = write_results(config.out, steps, recommended, reason, config.model_dump())
        print(table(steps))
        print(f"\nuse --parallel {recommended} ({reason})")
        print("wrote " + ", ".join(files))
    return guard.code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollouts tune", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    code: int = args.func(args)  # run_tune_command, set as the parser's default
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The `rollouts` command line: collect, demo, process, check, server, tokens, tune, sim-server. Outside the core:
it starts Prefect flows."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from commands.errors import EXIT_USAGE, error, usage_guard


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (`error: ... (see rollouts collect --help)`), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        error(f"{message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from commands.check import add_check_parser
    from commands.collect import add_collect_parser, add_demo_parser
    from commands.process import add_process_parser
    from commands.server import add_server_parser
    from commands.tokens import add_tokens_parser
    from commands.tune import add_tune_parser

    parser = OneLineParser(
        prog="rollouts", description="Collect verified LLM rollouts and build RL/SFT/DPO training data."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_collect_parser(sub)
    add_demo_parser(sub)
    add_process_parser(sub)
    add_check_parser(sub)
    add_server_parser(sub)
    add_tokens_parser(sub)
    sub.add_parser(
        "sim-server",
        help="serve the simulated OpenAI-compatible model (see rollouts sim-server --help)",
        add_help=False,
    )
    add_tune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim-server"]:
        from rollouts.sim.server import main as sim_main

        sim_main(argv[1:])
        return 0
    if argv[:1] == ["check"]:  # before anything loads polars (build_parser does)
        from rollouts.allocator import keep_freed_pages

        keep_freed_pages()
    args = build_parser().parse_args(argv)
    with usage_guard(verbose=getattr(args, "verbose", False)) as guard:
        return int(args.func(args) or 0)
    return guard.code


__all__ = ["EXIT_USAGE", "build_parser", "error", "main"]

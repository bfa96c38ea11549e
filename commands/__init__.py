"""The `rollouts` command line: collect, demo, process, check, server, tokens, tune, sim-server. Outside the core:
it starts Prefect flows."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from commands.errors import EXIT_USAGE, error, usage_guard


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (`error: ... (see rollouts collect --help)`), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        error(f"{message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


# Every command: (module, the function that adds its parser, its one-line help). `rollouts --help` lists the helps
# and a command builds only its own parser, so neither imports the other commands' configs (pydantic, polars, httpx).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "collect": (
        "commands.collect",
        "add_collect_parser",
        "collect rollouts for a prompts JSONL from an OpenAI-compatible server",
    ),
    "demo": (
        "commands.collect",
        "add_demo_parser",
        "run the whole pipeline on bundled math prompts against the built-in simulated server (or a real one)",
    ),
    "process": ("commands.process", "add_process_parser", "re-process rollouts into RL/SFT/DPO training files"),
    "check": ("commands.check", "add_check_parser", "rollout health checks on existing rollouts"),
    "server": ("commands.server", "add_server_parser", "start, stop or show the local Prefect server that runs use"),
    "tokens": ("commands.tokens", "add_tokens_parser", "check token contiguity and write training token records"),
    "sim-server": ("", "", "serve the simulated OpenAI-compatible model (see rollouts sim-server --help)"),
    "tune": (
        "commands.tune",
        "add_tune_parser",
        "find the --parallel knee of a model server with a sample of your prompts",
    ),
}


def command_help(name: str) -> str:
    return COMMANDS[name][2]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given `argv`, only the command it names gets its options (the rest their help)."""
    parser = OneLineParser(
        prog="rollouts", description="Collect verified LLM rollouts and build RL/SFT/DPO training data."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, (module, adder, help_text) in COMMANDS.items():
        if module and (argv is None or name == named):
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=bool(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim-server"]:
        from rollouts.sim.server import main as sim_main

        sim_main(argv[1:])
        return 0
    if argv[:1] == ["check"]:  # before anything loads polars
        from rollouts.allocator import keep_freed_pages

        keep_freed_pages()
    args = build_parser(argv).parse_args(argv)
    with usage_guard(verbose=getattr(args, "verbose", False)) as guard:
        return int(args.func(args) or 0)
    return guard.code


__all__ = ["EXIT_USAGE", "build_parser", "error", "main"]

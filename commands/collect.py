"""`rollouts collect` and `rollouts demo`: options generated from CollectConfig, the flow run, progress and summary."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from typing import TYPE_CHECKING, Any

from commands import command_help
from commands.errors import EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, error
from commands.options import Option, add_model_options, build, validated
from rollouts.config import (
    DEFAULT_OUT,
    CollectConfig,
    ConcurrencyConfig,
    EndpointConfig,
    RowsConfig,
    SamplingConfig,
    StorageConfig,
)
from rollouts.errors import ConfigError, RolloutsError
from rollouts.places import absolute
from rollouts.process.config import FORMATS, parse_objectives

if TYPE_CHECKING:
    from rollouts.run import RunRef
    from rollouts.storage import Store


def prefect_defaults(verbose: bool = False) -> None:
    """Offline, quiet, patient: set before Prefect is imported (explicit user settings win). The stages' INFO lines
    go to the flow run's logs in the UI; the terminal shows Prefect's warnings only, unless --verbose."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
    for name, value in (
        ("PREFECT_LOGGING_LEVEL", "INFO"),
        ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO" if verbose else "CRITICAL"),
    ):
        if not os.environ.get(name):
            os.environ[name] = value


def format_choice(specs: list[str], objectives: list[str]) -> dict[str, list[str]]:
    """`--format [OBJECTIVE:]NAME` values -> formats per objective: a bare name applies to every requested objective
    that has it. Objectives not named keep their defaults."""
    chosen: dict[str, list[str]] = {}
    for spec in specs:
        for value in (v.strip() for v in spec.split(",") if v.strip()):
            obj, _, name = value.rpartition(":")
            if obj and obj not in objectives:
                raise ConfigError(f"--format {value}: objective {obj!r} was not requested")
            targets = [obj] if obj else [o for o in objectives if name in FORMATS[o]]
            if not targets or any(name not in FORMATS[t] for t in targets):
                known = ", ".join(f"{o}:{f}" for o in objectives for f in FORMATS[o])
                raise ConfigError(f"--format {value}: not a format of {', '.join(objectives)} (known: {known})")
            for target in targets:
                if name not in chosen.setdefault(target, []):
                    chosen[target].append(name)
    return chosen


def objectives_of(values: Any) -> list[str]:
    try:
        return parse_objectives(values) or ["rl"]
    except ValueError as exc:
        raise ConfigError(f"--objective: {exc}") from None


def config_data(args: argparse.Namespace, options: list[Option]) -> dict[str, Any]:
    """The given options as the nested dict of a CollectConfig (with `--format` resolved per objective)."""
    data = build(args, options)
    train = data.get("train", {})
    if "formats" in train:
        train["formats"] = format_choice(train["formats"], objectives_of(data.get("objective", ["rl"])))
    return data


def add_collect_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "collect",
        help=command_help("collect"),
        description="Collect verified rollouts through the collect-rollouts Prefect flow. "
        "Every option is a field of CollectConfig, the flow's parameter.",
    )
    options = add_model_options(parser, CollectConfig, command="collect")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar (plain lines only)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs and error tracebacks")
    parser.set_defaults(func=cmd_collect, options=options)


def collect_config(args: argparse.Namespace) -> CollectConfig:
    return validated(CollectConfig, config_data(args, args.options), args.options)


def cmd_collect(args: argparse.Namespace) -> int:
    from rollouts.quality import require_known_checks

    config = collect_config(args)
    require_known_checks(config.quality, config.train.drop_unhealthy)  # refused before anything is collected
    prefect_defaults(verbose=args.verbose)
    return run_collect(config, show_progress=not args.no_progress, verbose=args.verbose)


def print_phases(board: Any) -> None:
    """Where the wall time of the command went, phase by phase (--verbose)."""
    times = board.phase_times()
    total = sum(seconds for _, seconds in times)
    print(
        "time by phase: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times) + f" (total {total:.2f} s)",
        file=sys.stderr,
        flush=True,
    )


def resolved(config: CollectConfig) -> tuple[CollectConfig, str | None]:
    """What the flow run gets: absolute paths (a relative path means nothing on a worker) and the run's real name,
    after every check that can be made without Prefect (secrets, input, endpoint, run name); and, for a run that
    resumes, a line saying how much is done."""
    from rollouts.redact import refuse_secrets
    from rollouts.stages.shard import preflight

    refuse_secrets(config)  # the user's own options, before any block adds its credentials
    data = config.model_dump()
    data["input"] = absolute(config.input)
    if not (config.storage.block and config.storage.out == DEFAULT_OUT):  # the default gives way to a block's URL
        data["storage"]["out"] = absolute(config.storage.out)
    config = CollectConfig.model_validate(data)
    checked, auth = config, None
    if config.endpoint.block or config.storage.block:  # blocks live in Prefect: resolved here for the checks only
        from commands.server import use_prefect_server

        use_prefect_server()
        from blocks import apply_blocks, endpoint_auth

        checked, auth = apply_blocks(config), endpoint_auth(config.endpoint.block, config.api_key())
    run, store, manifest = preflight(checked, auth)
    named = config.model_copy(update={"run_name": run.run_url.rstrip("/").rsplit("/", 1)[-1]})
    return named, None if manifest is None else _resume_note(run, store, manifest)


def _resume_note(run: RunRef, store: Store, manifest: dict[str, Any]) -> str:
    done = 0
    for path in store.glob("rollouts/*.jsonl"):
        with store.fs.open(path, "rb") as fh:
            done += sum(1 for line in fh if line.strip())
    expected = (manifest.get("prompts") or 0) * run.config.repeats
    return f"resuming run {run.run_url}: {done} of {expected or '?'} rollouts already done"


def run_collect(config: CollectConfig, *, show_progress: bool, verbose: bool = False) -> int:
    from commands.server import use_prefect_server
    from commands.terminal import ProgressDisplay, print_summary
    from rollouts.collector.interrupt import RESUME_HINT, install_signal_handlers
    from rollouts.collector.runtime import collector

    board = collector().board
    board.reset()
    board.set_phase("loading")  # the command's own imports happened before this: see `python -X importtime`
    with ProgressDisplay(board, enabled=show_progress):
        board.set_phase("checking the input, the model server and the run name")
        config, note = resolved(config)
        if note:
            print(note, file=sys.stderr, flush=True)
        board.set_phase("starting Prefect")
        use_prefect_server(wait=False)  # a server to start boots while Prefect and the flow are imported
        from prefect.settings import temporary_settings

        from commands.server import await_prefect_server, prefect_server_booting
        from commands.stale_runs import reap_in_background, reap_stale_runs, this_process

        # Flow runs of collect processes killed earlier end Crashed, not Running forever: read beside the flow's
        # import when the server is up; after it, when the server is just starting (beside the flow run's start,
        # that server's first answers delayed the start by ~1 s).
        booting = prefect_server_booting()
        reaped = None if booting else reap_in_background()
        from flows.collect import collect_rollouts

        await_prefect_server()
        if booting:
            reap_stale_runs()
        from prefect import tags

        # A CLI run lives in this process: no heartbeat thread (it costs ~1 s to join at exit).
        stop = collector().stop
        stop.reset()
        restore = install_signal_handlers(stop)  # Ctrl-C: no new rollouts, in-flight ones finish, then exit 130
        try:
            with temporary_settings(updates={"flows.heartbeat_frequency": None}), tags(*this_process().tags()):
                board.set_phase("starting the flow run")
                state = collect_rollouts(config, return_state=True)
        finally:
            restore()
            if reaped is not None:
                reaped()
    board.set_phase("done")
    if verbose:
        print_phases(board)
    if stop.is_set():
        error(f"{stop.reason}: {RESUME_HINT}")
        return stop.exit_code
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        summary = getattr(result, "summary", None)
        if summary:
            print_summary(summary)  # the reason is its last line, printed once
        else:
            error(getattr(result, "message", str(result)))
        return EXIT_RUN_FAILED if summary or not isinstance(result, RolloutsError) else EXIT_USAGE
    print_summary(result.model_dump())
    return EXIT_OK


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help=command_help("demo"))
    demo.add_argument("--out", default="./runs", help="where the run is written (default ./runs)")
    demo.add_argument("--run-name", default="demo", help="run directory name (default demo)")
    demo.add_argument("--num-repeats", type=int, default=4, help="rollouts per prompt (default 4)")
    demo.add_argument("--limit", type=int, help="use the first N of the 64 bundled prompts (default all)")
    demo.add_argument("--parallel", type=int, default=64, help="rollouts in flight (default 64)")
    demo.add_argument("--latency-ms", type=float, default=100, help="simulated model latency (default 100 ms)")
    demo.add_argument(
        "--model-url", help="a real OpenAI-compatible server (ending in /v1) instead of the simulated one; with --model"
    )
    demo.add_argument("--model", help="the model name that server serves (with --model-url)")
    demo.add_argument(
        "--max-output-tokens", type=int, help="output token limit per model call (default: none, the server's own)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no live progress bar")
    demo.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if (args.model_url is None) != (args.model is None):
        error("--model-url and --model go together: the server, and the model name it serves")
        return EXIT_USAGE
    prefect_defaults(verbose=args.verbose)
    if args.model_url is not None:
        print(f"collecting from {args.model_url} ({args.model}) through the collect-rollouts flow", file=sys.stderr)
        return _demo_run(args, args.model_url, args.model)
    from rollouts.sim.launch import start_sim_server

    print(f"starting the simulated model server (latency {args.latency_ms} ms)...", file=sys.stderr)
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        print(f"simulated model server at {server.url}; collecting through the collect-rollouts flow", file=sys.stderr)
        return _demo_run(args, server.url, "sim-model")


def _demo_run(args: argparse.Namespace, model_url: str, model: str) -> int:
    prompts = resources.files("rollouts") / "data" / "math_prompts.jsonl"
    # The nested form, section by section (what the flat keywords the model also accepts are moved into), so each
    # section's options are checked by their own model's signature.
    config = CollectConfig(
        input=str(prompts),
        objective=["rl", "sft", "dpo"],
        run_name=args.run_name,
        rows=RowsConfig(limit=args.limit),
        endpoint=EndpointConfig(model_url=model_url, model=model),
        sampling=SamplingConfig(
            num_repeats=args.num_repeats, temperature=0.8, seed=1234, max_output_tokens=args.max_output_tokens
        ),
        concurrency=ConcurrencyConfig(parallel=args.parallel, shard_size=16),
        storage=StorageConfig(out=args.out),
    )
    return run_collect(config, show_progress=not args.no_progress)

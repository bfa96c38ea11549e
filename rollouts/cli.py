"""`rollouts` command line: collect, demo, process, sim-server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from typing import Any

from pydantic import ValidationError

from rollouts.errors import RolloutsError

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def prefect_defaults(verbose: bool = False) -> None:
    """Offline, quiet, patient: set before Prefect is imported (explicit user settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_collect_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("input", help="prompts JSONL (NeMo Gym rows, {\"prompt\": ...} or {\"messages\": [...]}); local path or s3:// URL")
    add("--out", default="./runs", help="where runs are written: local path or fsspec URL such as s3://bucket/runs (default ./runs)")
    add("--model-url", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    add("--model", required=True, help="model name sent with each request, e.g. Qwen/Qwen3-8B")
    add("--api", choices=["chat", "responses"], default="chat", help="Chat Completions or Responses API (default chat)")
    add("--api-key-env", metavar="VAR", help="environment variable that holds the API key (sent as a Bearer token)")
    add("--objective", default="rl", help="rl | sft | dpo, or a comma list such as rl,dpo: training files to write; the first sets sampling defaults (default rl)")
    add("--num-repeats", type=int, help="rollouts per prompt (default: rl 8, sft 2, dpo 4)")
    add("--parallel", type=int, default=256, help="global number of rollouts in flight (NeMo Gym's num_samples_in_parallel; default 256)")
    add("--temperature", type=float, help="sampling temperature; overrides the rows' value (default: rl 1.0, sft 0.2, dpo 0.7)")
    add("--top-p", type=float, help="nucleus sampling; overrides the rows' value (default 1.0)")
    add("--max-output-tokens", type=int, help="output token limit per model call; overrides the rows' value")
    add("--seed", type=int, help="sampling seed; rollout i of a prompt uses seed + i")
    add("--limit", type=int, help="use at most this many prompts")
    add("--start", type=int, default=0, help="first input row to use (0-based; for splitting a dataset across machines)")
    add("--end", type=int, help="stop before this input row")
    add("--shard-size", type=int, default=256, help="prompts per shard; one Prefect task run per shard and stage (default 256)")
    add("--max-concurrent-shards", type=int, default=4, help="shard tasks running at once: the task runner's limit (default 4)")
    add("--task-runner", choices=["threads", "dask"], default="threads",
        help="run shard tasks on threads of this process (default) or on a Dask cluster")
    add("--dask-address", metavar="tcp://HOST:8786", help="scheduler of an existing Dask cluster (default: start a local one)")
    add("--dask-workers", type=int, default=2,
        help="Dask worker processes: started locally, or expected at --dask-address; --parallel is split between them (default 2)")
    add("--env", default="math", help="environment for rows without agent_ref: math, exact_match, multiple_choice or a --remote-env name (default math)")
    add("--remote-env", action="append", metavar="NAME=URL", help="a NeMo Gym resources server scoring rows whose agent_ref.name is NAME (repeatable)")
    add("--run-name", help="name of the run directory (default: input name + digest of config and input)")
    add("--request-timeout", type=float, default=600.0, help="seconds per model request (default 600)")
    add("--max-retries", type=int, default=4, help="retries per request on 429/5xx/connection errors, with backoff (default 4)")
    add("--max-failure-fraction", type=float, default=0.05, help="the run fails when more rollouts than this fraction fail (default 0.05)")
    add("--return-tokens", action="store_true", help="ask for prompt/generation token ids and logprobs (vLLM return_token_ids)")
    add("--max-turns", type=int, default=8, help="model calls per rollout when a remote environment's tools are called (default 8)")
    add("--storage-options", type=_json_object, metavar="JSON", default={},
        help="fsspec options for --out and an s3:// INPUT, e.g. '{\"client_kwargs\": {\"endpoint_url\": \"http://minio:9000\"}}'")
    add("--no-progress", action="store_true", help="no live progress bar (logs only)")
    add("--verbose", "-v", action="store_true", help="show Prefect's logs")
    from rollouts.process.cli import add_filter_arguments

    add_filter_arguments(parser, collect=True)


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The filter and format options of `rollouts process`, for the flow's filter and format stages."""
    from rollouts.process.cli import filter_options, parse_objectives_and_formats

    _, formats = parse_objectives_and_formats(argparse.Namespace(objective=[args.objective], formats=args.formats))
    return {**filter_options(args), "formats": {k: v for k, v in formats.items() if v}}


def collect_config(args: argparse.Namespace):
    from rollouts.config import CollectConfig, parse_remote_envs

    fields: dict[str, Any] = {
        "input": args.input, "out": args.out, "model_url": args.model_url, "model": args.model, "api": args.api,
        "api_key_env": args.api_key_env, "objective": args.objective, "num_repeats": args.num_repeats,
        "parallel": args.parallel, "temperature": args.temperature, "top_p": args.top_p,
        "max_output_tokens": args.max_output_tokens, "seed": args.seed, "limit": args.limit, "start": args.start,
        "end": args.end, "shard_size": args.shard_size, "max_concurrent_shards": args.max_concurrent_shards,
        "task_runner": args.task_runner, "dask_address": args.dask_address, "dask_workers": args.dask_workers,
        "env": args.env, "remote_env": parse_remote_envs(args.remote_env), "run_name": args.run_name,
        "request_timeout": args.request_timeout, "max_retries": args.max_retries,
        "max_failure_fraction": args.max_failure_fraction, "return_tokens": args.return_tokens,
        "max_turns": args.max_turns, "min_reward": args.min_reward, "train_options": train_options(args),
        "storage_options": args.storage_options,
    }
    return CollectConfig(**fields)


def run_collect(config, *, show_progress: bool) -> int:
    from rollouts.terminal import ProgressDisplay, print_summary

    from flows.collect import collect_rollouts

    from prefect.settings import temporary_settings

    # A CLI run lives in this process: no heartbeat thread (it costs ~1 s to join at exit).
    with ProgressDisplay(enabled=show_progress), temporary_settings(updates={"flows.heartbeat_frequency": None}):
        state = collect_rollouts(config, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        summary = getattr(result, "summary", None)
        if summary:
            print_summary(summary)
        _error(str(result))
        return EXIT_RUN_FAILED if summary or not isinstance(result, RolloutsError) else EXIT_USAGE
    print_summary(result.model_dump())
    return EXIT_OK


def cmd_collect(args: argparse.Namespace) -> int:
    config = collect_config(args)
    return run_collect(config, show_progress=not args.no_progress)


def cmd_demo(args: argparse.Namespace) -> int:
    from rollouts.config import CollectConfig
    from rollouts.sim.launch import start_sim_server

    prompts = resources.files("rollouts") / "data" / "math_prompts.jsonl"
    print(f"starting the simulated model server (latency {args.latency_ms} ms)...", file=sys.stderr)
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        print(f"simulated model server at {server.url}; collecting through the collect-rollouts flow", file=sys.stderr)
        config = CollectConfig(input=str(prompts), out=args.out, model_url=server.url, model="sim-model",
                               objective=["rl", "sft", "dpo"], num_repeats=args.num_repeats, parallel=args.parallel,
                               temperature=0.8, seed=1234, shard_size=16, run_name=args.run_name)
        return run_collect(config, show_progress=not args.no_progress)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollouts", description="Collect verified LLM rollouts and build RL/SFT/DPO training data.")
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="collect rollouts for a prompts JSONL from an OpenAI-compatible server",
                             description="Collect verified rollouts through the collect-rollouts Prefect flow.")
    add_collect_options(collect)
    collect.set_defaults(func=cmd_collect)
    demo = sub.add_parser("demo", help="run the whole pipeline on bundled math prompts against the built-in simulated server")
    demo.add_argument("--out", default="./runs", help="where the run is written (default ./runs)")
    demo.add_argument("--run-name", default="demo", help="run directory name (default demo)")
    demo.add_argument("--num-repeats", type=int, default=4, help="rollouts per prompt (default 4)")
    demo.add_argument("--parallel", type=int, default=64, help="rollouts in flight (default 64)")
    demo.add_argument("--latency-ms", type=float, default=100, help="simulated model latency (default 100 ms)")
    demo.add_argument("--no-progress", action="store_true", help="no live progress bar")
    demo.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs")
    demo.set_defaults(func=cmd_demo)
    sim = sub.add_parser("sim-server", help="serve the simulated OpenAI-compatible model", add_help=False)
    sim.set_defaults(func=None)
    from rollouts.process.cli import add_process_parser

    add_process_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim-server"]:
        from rollouts.sim.server import main as sim_main

        return sim_main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    prefect_defaults(verbose=getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "options"
            _error(f"--{where.replace('_', '-')}: {err['msg']}")
        return EXIT_USAGE
    except RolloutsError as exc:
        _error(exc.message)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted: run the same command again to resume where it stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())

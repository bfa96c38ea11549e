"""Benchmark: 4-turn tool rollouts through the real flow against the simulated server, beside a bare aiohttp client.

    python bench/agent_throughput.py                         # --parallel 256, 200 ms, one pair
    python bench/agent_throughput.py --pairs 3 --api responses

Every rollout is a kv_store task of three planned tool turns (two parallel reads, a write, two parallel deletes)
and a final answer: 4 model calls of `--latency-ms` each, so the ideal is parallel / (4 x latency) rollouts/s.
A pair is two fresh child processes against one simulated server: a bare aiohttp client making the same 4
sequential calls per episode with the same concurrency (orjson bodies, the reply appended to the conversation,
tools answered "ok", nothing else), then the collect flow (Prefect's embedded server, `--env kv_store`, tools run
and the final store verified). Rates run from the first request to the last response. CPU per model call is the
child process's CPU over that same window (sampled every 50 ms), so Prefect's start-up is not in it; the server's
CPU per call and the 1-minute load average before each run say how busy the machine was. The machine is shared and
noisy: compare the two rows of a pair, not runs of different invocations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CALLS_PER_ROLLOUT = 4
SYSTEM = (
    "You manage a key-value store through its tools (list_keys, get_value, set_value, delete_key). "
    "Make exactly the requested changes, then reply with a one-line confirmation."
)


def task_row(index: int) -> dict[str, Any]:
    """One 3-step kv_store task: read two keys at once, write their product, delete both at once."""
    width, height, area = f"width_{index}", f"height_{index}", f"area_{index}"
    x, y = 2 + index % 97, 3 + index % 89
    user = (
        f"Store `{width}` times `{height}` under `{area}`, then delete `{width}` and `{height}`.\n\nSteps:\n"
        f'1. `get_value(key="{width}")` and `get_value(key="{height}")`\n'
        f'2. `set_value(key="{area}", value="{x * y}")`\n'
        f'3. `delete_key(key="{width}")` and `delete_key(key="{height}")`'
    )
    return {
        "responses_create_params": {
            "input": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        },
        "agent_ref": {"name": "kv_store"},
        "initial_store": {width: str(x), height: str(y), "other": "kept"},
        "expected_store": {area: str(x * y), "other": "kept"},
    }


class CpuSampler(threading.Thread):
    """(wall time, process CPU time) every `every_s`, to read the CPU spent inside a window known only afterwards."""

    def __init__(self, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.time(), time.process_time()))
            self.done.wait(self.every_s)

    def cpu_between(self, start: float, end: float) -> float:
        def at(moment: float) -> float:  # linear between the samples around `moment`
            before = max((s for s in self.samples if s[0] <= moment), default=self.samples[0])
            after = min((s for s in self.samples if s[0] >= moment), default=self.samples[-1])
            if after[0] == before[0]:
                return before[1]
            return before[1] + (after[1] - before[1]) * (moment - before[0]) / (after[0] - before[0])

        return at(end) - at(start)


def model_calls(row: dict[str, Any]) -> int:
    """Model calls of a rollout: its tool turns (each ends at its function outputs) and a final answer, if any."""
    output = row["response"]["output"]
    turns = sum(
        1
        for i, item in enumerate(output)
        if item["type"] == "function_call_output"
        and (i + 1 == len(output) or output[i + 1]["type"] != "function_call_output")
    )
    return turns + int(bool(output) and output[-1]["type"] != "function_call_output")


def flow_child(args: argparse.Namespace) -> dict[str, Any]:
    from commands.collect import prefect_defaults

    prefect_defaults()
    from prefect.settings import temporary_settings

    from flows.collect import collect_rollouts
    from rollouts.config import CollectConfig

    work = Path(args.workdir)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(task_row(i)) + "\n" for i in range(args.rollouts // args.repeats)))
    config = CollectConfig(
        input=str(prompts),
        out=str(work / "runs"),
        model_url=args.url,
        model="sim-model",
        api=args.api,
        env="kv_store",
        num_repeats=args.repeats,
        parallel=args.parallel,
        temperature=0.0,
        seed=1,
        shard_size=args.shard_size,
        run_name="bench-agent",
        objective="rl",
    )
    sampler = CpuSampler()
    sampler.start()
    t0 = time.time()
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        summary = collect_rollouts(config)
    sampler.done.set()
    sampler.join()
    rows = [json.loads(line) for file in (Path(summary.run_url) / "rollouts").glob("*.jsonl") for line in file.open()]
    start = min(r["timings"]["started_at"] for r in rows)
    end = max(r["timings"]["finished_at"] for r in rows)
    calls = sum(model_calls(r) for r in rows)
    return {
        "rollouts": len(rows),
        "failed": summary.rollouts_failed,
        "calls": calls,
        "window_s": end - start,
        "cpu_s": sampler.cpu_between(start, end),
        "mean_reward": summary.mean_reward,
        "startup_s": start - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def bare_episodes(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import orjson

    from rollouts.client.chat import chat_tools
    from rollouts.envs import KeyValueEnvironment

    specs = KeyValueEnvironment().tool_specs()
    tools = chat_tools(specs) if args.api == "chat" else specs
    path = "/chat/completions" if args.api == "chat" else "/responses"
    headers = {"Content-Type": "application/json"}
    rollouts = args.rollouts
    counts = {"next": 0, "calls": 0, "failed": 0}

    async def episode(session: aiohttp.ClientSession, index: int) -> None:
        conversation = list(task_row(index // args.repeats)["responses_create_params"]["input"])
        key = "messages" if args.api == "chat" else "input"
        sampling = {"temperature": 0.0, "seed": 1 + index % args.repeats}
        while True:
            body = orjson.dumps({"model": "sim-model", key: conversation, "tools": tools, **sampling})
            async with session.post(args.url + path, data=body, headers=headers) as response:
                reply = orjson.loads(await response.read())
            counts["calls"] += 1
            if response.status != 200:
                counts["failed"] += 1
                return
            if args.api == "chat":
                message = reply["choices"][0]["message"]
                conversation.append(message)
                calls = message.get("tool_calls") or []
                conversation += [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls]
            else:
                conversation += reply["output"]
                calls = [item for item in reply["output"] if item["type"] == "function_call"]
                conversation += [
                    {"type": "function_call_output", "call_id": c["call_id"], "output": "ok"} for c in calls
                ]
            if not calls:
                return

    async def worker(session: aiohttp.ClientSession) -> None:
        while counts["next"] < rollouts:
            index = counts["next"]
            counts["next"] += 1
            await episode(session, index)

    connector = aiohttp.TCPConnector(limit=args.parallel)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        cpu0, t0 = time.process_time(), time.time()
        await asyncio.gather(*(worker(session) for _ in range(args.parallel)))
        window, cpu = time.time() - t0, time.process_time() - cpu0
    return {
        "rollouts": rollouts,
        "failed": counts["failed"],
        "calls": counts["calls"],
        "window_s": window,
        "cpu_s": cpu,
        "mean_reward": None,
        "startup_s": 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the simulated server's share of the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(kind: str, args: argparse.Namespace, url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        command = [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--url",
            url,
            "--workdir",
            work,
            "--api",
            args.api,
            "--parallel",
            str(args.parallel),
            "--rollouts",
            str(args.rollouts),
            "--repeats",
            str(args.repeats),
            "--shard-size",
            str(args.shard_size),
        ]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"benchmark child {kind!r} failed")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--rollouts", type=int, help="rollouts per run (default 20 x parallel)")
    parser.add_argument("--repeats", type=int, default=4, help="rollouts per task")
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--api", choices=["chat", "responses"], default="chat")
    parser.add_argument("--pairs", type=int, default=1, help="bare + flow pairs to run, one after the other")
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--child", choices=["flow", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rollouts = args.rollouts or 20 * args.parallel
    if args.child:
        result = flow_child(args) if args.child == "flow" else asyncio.run(bare_episodes(args))
        print("RESULT " + json.dumps(result), flush=True)
        return
    from rollouts.sim.launch import start_sim_server

    ideal = args.parallel / (CALLS_PER_ROLLOUT * args.latency_ms / 1000)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"--parallel {args.parallel}, {args.latency_ms:.0f} ms per call, --api {args.api}, "
        f"{args.rollouts} rollouts of {CALLS_PER_ROLLOUT} model calls (kv_store: 3 tool turns + the answer)"
    )
    print(
        f"{'pair':>4} {'client':<12} {'rollouts':>8} {'failed':>6} {'rollouts/s':>10} {'calls/s':>8} "
        f"{'ideal r/s':>9} {'ratio':>6} {'CPU ms/call':>11} {'server ms/call':>14} {'reward':>6} "
        f"{'start-up s':>10} {'load':>5}"
    )
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        for pair in range(1, args.pairs + 1):
            ratios, cpu = {}, {}
            for kind, label in (("bare", "bare aiohttp"), ("flow", "collect flow")):
                load = os.getloadavg()[0]
                server_cpu = cpu_seconds(server.process.pid)
                r = run_child(kind, args, server.url)
                server_cpu = cpu_seconds(server.process.pid) - server_cpu
                rate = r["rollouts"] / r["window_s"]
                ratios[kind] = rate / ideal
                reward = "" if r["mean_reward"] is None else f"{r['mean_reward']:.2f}"
                calls = max(r["calls"], 1)
                cpu[kind] = r["cpu_s"] / calls
                print(
                    f"{pair:>4} {label:<12} {r['rollouts']:>8} {r['failed']:>6} {rate:>10.1f} "
                    f"{r['calls'] / r['window_s']:>8.0f} {ideal:>9.0f} {ratios[kind]:>6.2f} "
                    f"{1000 * r['cpu_s'] / calls:>11.3f} {1000 * server_cpu / calls:>14.3f} {reward:>6} "
                    f"{r['startup_s']:>10.1f} {load:>5.1f}",
                    flush=True,
                )
            print(
                f"{pair:>4} flow ratio {ratios['flow']:.2f} beside bare {ratios['bare']:.2f}: "
                f"{ratios['flow'] / ratios['bare']:.2f} of the bare client's rate (goal >= 0.9), "
                f"{cpu['flow'] / cpu['bare']:.2f}x its CPU per model call (goal <= 2)",
                flush=True,
            )


if __name__ == "__main__":
    main()

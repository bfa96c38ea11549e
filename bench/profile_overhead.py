"""Benchmark: what `--profile` costs. The collector's core loop (generate + verify, no Prefect) against the simulated
server, with the function profile off and on, alternating, each run in a fresh process.

    python bench/profile_overhead.py                          # 4 x 5,000 rollouts at --parallel 256, 200 ms
    python bench/profile_overhead.py --parallel 64 --rollouts 2000 --pairs 3

Reported per setting: steady rollouts/s (first request to last response) and the collector's CPU ms per rollout
(the whole process, start-up included); the ratio on/off is the overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> None:
    from rollouts.config import CollectConfig
    from rollouts.report.metrics import read_run_frame
    from rollouts.report.profiler import function_profile
    from rollouts.run import run_store
    from rollouts.stages.inline import collect_plan
    from rollouts.stages.shard import plan_run

    work = Path(args.workdir)
    prompts = work / "prompts.jsonl"
    with prompts.open("w") as fh:
        for i in range(args.rollouts // 4):
            fh.write(
                json.dumps(
                    {"responses_create_params": {"input": f"What is {i} + {i + 7}?"}, "expected_answer": str(2 * i + 7)}
                )
                + "\n"
            )
    config = CollectConfig(
        input=str(prompts),
        out=str(work / "runs"),
        model_url=args.url,
        model="sim-model",
        num_repeats=4,
        parallel=args.parallel,
        temperature=0.7,
        seed=1,
        shard_size=512,
        run_name="overhead",
    )
    plan = plan_run(config)
    store = run_store(plan.run)

    async def collect() -> None:
        await collect_plan(plan)

    cpu0 = time.process_time()
    with function_profile(args.profile, store, duty=args.duty):
        asyncio.run(collect())
    cpu = time.process_time() - cpu0
    frame = read_run_frame(store).select("timings").unnest("timings")
    window = float(frame["finished_at"].max() - frame["started_at"].min())
    print(
        "RESULT "
        + json.dumps(
            {
                "profile": args.profile,
                "rollouts": frame.height,
                "rps": frame.height / window,
                "cpu_ms": 1000 * cpu / frame.height,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--pairs", type=int, default=2, help="off/on pairs, alternating")
    parser.add_argument("--duty", type=float, default=1.0, help="fraction of the time the profiler is on")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from rollouts.sim.launch import start_sim_server

    results: dict[bool, list[dict]] = {False: [], True: []}
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        for _ in range(args.pairs):
            for profile in (False, True):
                with tempfile.TemporaryDirectory() as work:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--child",
                        "--parallel",
                        str(args.parallel),
                        "--rollouts",
                        str(args.rollouts),
                        "--url",
                        server.url,
                        "--workdir",
                        work,
                        "--duty",
                        str(args.duty),
                    ] + (["--profile"] if profile else [])
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                    if line is None:
                        raise SystemExit(out.stderr[-3000:])
                    results[profile].append(json.loads(line[len("RESULT ") :]))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"--parallel {args.parallel}, {args.rollouts} rollouts per run, latency {args.latency_ms:g} ms, "
        f"{args.pairs} off/on pairs, duty {args.duty:g}"
    )
    rps = {p: statistics.median(r["rps"] for r in rows) for p, rows in results.items()}
    cpu = {p: statistics.median(r["cpu_ms"] for r in rows) for p, rows in results.items()}
    ideal = args.parallel / (args.latency_ms / 1000)
    for p in (False, True):
        print(
            f"--profile {'on ' if p else 'off'}: {rps[p]:8.1f} rollouts/s ({rps[p] / ideal:.2f} of ideal {ideal:.0f}), "
            f"{cpu[p]:.2f} CPU ms/rollout   runs: " + ", ".join(f"{r['rps']:.0f}" for r in results[p])
        )
    print(f"overhead: throughput x{rps[True] / rps[False]:.2f}, CPU per rollout x{cpu[True] / cpu[False]:.2f}")


if __name__ == "__main__":
    main()

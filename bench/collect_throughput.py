"""Benchmark: collection throughput of the real flow against the simulated server at 200 ms latency.

    python bench/collect_throughput.py                 # --parallel 64, 256, 1024
    python bench/collect_throughput.py --parallel 256 --profile   # also where the collector's CPU goes

Each setting runs in a fresh child process (so CPU time and peak RSS are the collector's own) with Prefect's
embedded server. Steady-state rollouts/s is measured from the first request to the last response; the fixed
start-up (Prefect server, flow run, sharding) is reported separately as the time to the first request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_prompts(path: Path, prompts: int) -> None:
    with path.open("w") as fh:
        for i in range(prompts):
            fh.write(json.dumps({"responses_create_params": {"input": f"What is {i} + {i + 7}?"},
                                 "expected_answer": str(2 * i + 7)}) + "\n")


def child(args: argparse.Namespace) -> None:
    """One measured collection; prints a JSON line."""
    from commands.collect import prefect_defaults

    prefect_defaults()
    from prefect.settings import temporary_settings

    from flows.collect import collect_rollouts
    from rollouts.config import CollectConfig

    work = Path(args.workdir)
    prompts = work / "prompts.jsonl"
    write_prompts(prompts, args.rollouts // args.repeats)
    config = CollectConfig(input=str(prompts), out=str(work / "runs"), model_url=args.url, model="sim-model",
                           num_repeats=args.repeats, parallel=args.parallel, temperature=0.7, seed=1,
                           shard_size=args.shard_size, max_concurrent_shards=args.max_concurrent_shards,
                           run_name=f"bench-{args.parallel}", objective="rl")
    cpu0 = time.process_time()
    t0 = time.time()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        summary = collect_rollouts(config)
    if profiler:
        profiler.disable()
    wall = time.time() - t0
    cpu = time.process_time() - cpu0
    profile = json.loads((Path(summary.run_url) / "profile" / "profile.json").read_text())
    first_request = min(json.loads(line)["timings"]["started_at"]
                        for file in (Path(summary.run_url) / "rollouts").glob("*.jsonl") for line in file.open())
    result = {
        "parallel": args.parallel, "rollouts": summary.rollouts_ok, "failed": summary.rollouts_failed,
        "steady_rps": profile["rollouts_per_s"], "ideal_rps": args.parallel / 0.2,
        "cpu_ms_per_rollout": 1000 * cpu / max(summary.rollouts_ok, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "startup_s": first_request - t0, "wall_s": wall, "mean_reward": summary.mean_reward,
    }
    print("RESULT " + json.dumps(result), flush=True)
    if profiler:
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, action="append", help="settings to run (default 64, 256, 1024)")
    parser.add_argument("--rollouts", type=int, help="rollouts per setting (default max(5000, 40 x parallel))")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--max-concurrent-shards", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="print the collector's cProfile top functions")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.parallel = args.parallel[0]
        child(args)
        return
    from rollouts.sim.launch import start_sim_server

    settings = args.parallel or [64, 256, 1024]
    rows = []
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        for parallel in settings:
            rollouts = args.rollouts or max(5000, 40 * parallel)
            with tempfile.TemporaryDirectory() as work:
                cmd = [sys.executable, __file__, "--child", "--parallel", str(parallel), "--rollouts", str(rollouts),
                       "--repeats", str(args.repeats), "--shard-size", str(args.shard_size),
                       "--max-concurrent-shards", str(args.max_concurrent_shards), "--url", server.url, "--workdir", work]
                if args.profile:
                    cmd.append("--profile")
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"benchmark child for --parallel {parallel} failed")
                if args.profile:
                    print(out.stderr[-12000:], file=sys.stderr)
                rows.append(json.loads(line[len("RESULT "):]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"latency {args.latency_ms:.0f} ms, {args.repeats} repeats/prompt, math verification")
    header = f"{'parallel':>8} {'rollouts':>8} {'steady r/s':>10} {'ideal r/s':>9} {'ratio':>6} {'CPU ms/r':>8} {'peak RSS MB':>11} {'start-up s':>10} {'wall s':>7}"
    print(header)
    for r in rows:
        ratio = (r["steady_rps"] or 0) / r["ideal_rps"]
        print(f"{r['parallel']:>8} {r['rollouts']:>8} {r['steady_rps'] or 0:>10.1f} {r['ideal_rps']:>9.0f} {ratio:>6.2f} "
              f"{r['cpu_ms_per_rollout']:>8.2f} {r['peak_rss_mb']:>11.0f} {r['startup_s']:>10.1f} {r['wall_s']:>7.1f}")


if __name__ == "__main__":
    main()

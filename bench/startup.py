"""Benchmark: wall time of a 10-prompt `rollouts collect`, the first run on a machine and the runs after it.

    python bench/startup.py                 # 1 first run (fresh $ROLLOUTS_HOME: no local Prefect server yet) + 5 more
    python bench/startup.py --runs 10

A fresh `$ROLLOUTS_HOME` (a temporary directory) stands for a fresh machine: the first run starts the long-lived
local Prefect server (a new database, its migrations) and leaves it running; the later runs find it. Each run is a
new process running the real command against the simulated server (0 ms latency, 2 repeats per prompt), with
`--verbose` for its phases. Beside them, in the same invocation, the bare cost of Python importing the flow
(`python -c "import flows.collect"`), which every run pays before it can do anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHASE = re.compile(r"(.+?) (\d+\.\d+) s(?:, | \(total)")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="runs in all, the first one included (default 6)")
    parser.add_argument("--prompts", type=int, default=10)
    args = parser.parse_args()
    from bench.cpu_window import yardstick
    from rollouts.sim.launch import start_sim_server

    home = tempfile.mkdtemp(prefix="rollouts-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(ROLLOUTS_HOME=home, PYTHONPATH=str(ROOT))
    env.pop("ROLLOUTS_SERVER", None)
    work = Path(tempfile.mkdtemp(prefix="rollouts-startup-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"responses_create_params": {"input": f"What is {i} + 2?"},
                                           "expected_answer": str(i + 2)}) + "\n" for i in range(args.prompts)))
    print(f"CPU yardstick (fixed pure-Python loop, lower is faster): {yardstick():.0f} ms")
    imports = [timed([sys.executable, "-c", "import flows.collect"], env)[0] for _ in range(3)]
    walls: list[float] = []
    phases: list[dict[str, float]] = []
    try:
        with start_sim_server(latency_ms=0, seed=0) as server:
            for i in range(args.runs):
                cmd = [sys.executable, "-m", "commands", "collect", str(prompts), "--model-url", server.url,
                       "--model", "sim-model", "--num-repeats", "2", "--out", str(work / "runs"),
                       "--run-name", f"startup-{i}", "--no-progress", "--verbose"]
                wall, done = timed(cmd, env)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"run {i} failed with exit code {done.returncode}")
                walls.append(wall)
                line = next((x for x in done.stderr.splitlines() if x.startswith("time by phase: ")), "")
                phases.append({name: float(s) for name, s in PHASE.findall(line[len("time by phase: "):])})
    finally:
        subprocess.run([sys.executable, "-m", "commands", "server", "stop"], env=env, cwd=ROOT, capture_output=True)
    later = walls[1:]
    print(f"{args.prompts} prompts x 2 repeats, simulated server at 0 ms; `import flows.collect` alone: "
          f"median {statistics.median(imports):.1f} s")
    print("| run | wall s | wall / import alone |")
    print("|---|---:|---:|")
    print(f"| first (starts the local Prefect server) | {walls[0]:.1f} | {walls[0] / statistics.median(imports):.1f} |")
    if later:
        print(f"| later, median of {len(later)} (min-max {min(later):.1f}-{max(later):.1f}) | "
              f"{statistics.median(later):.1f} | {statistics.median(later) / statistics.median(imports):.1f} |")
    names = list(dict.fromkeys(name for p in phases for name in p))
    print("\nphases (--verbose), first run | median of the later runs, s:")
    for name in names:
        rest = [p[name] for p in phases[1:] if name in p]
        print(f"  {name:<58} {phases[0].get(name, 0.0):6.2f} | {statistics.median(rest) if rest else 0.0:6.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: wall time of a 10-prompt `rollouts collect`, the first run on a machine and the runs after it.

    python bench/startup.py                 # 1 first run (fresh $ROLLOUTS_HOME: no local Prefect server yet) + 5 more
    python bench/startup.py --runs 10
    python bench/startup.py --help-only     # `rollouts --help`, `collect --help`, a usage error (about 10 s)

A fresh `$ROLLOUTS_HOME` (a temporary directory) stands for a fresh machine: the first run starts the long-lived
local Prefect server (a new database, its migrations) and leaves it running; the later runs find it. Each run is a
new process running the real command against the simulated server (0 ms latency, 2 repeats per prompt), with
`--verbose` for its phases. Beside them, in the same invocation, the bare cost of Python importing the flow
(`python -c "import flows.collect"`), which every run pays before it can do anything, and the time a new Prefect
server takes to answer, with its database from the snapshot (schema and registered block types: what the first run
does) and from Prefect's own migrations and registration, in turn (`--server-starts` pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHASE = re.compile(r"(.+?) (\d+\.\d+) s(?:, | \(total)")


def cpu_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit code) of one command."""
    wall, cpu, done = timed_with_cpu(cmd, env)
    return wall, cpu, done.returncode


def timed_with_cpu(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall s, CPU s of the child and its children, the finished process) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, done = timed(cmd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done


def help_table(env: dict[str, str], repeats: int) -> None:
    """`--help`s and a usage error, each beside `python -c pass` (the interpreter's own start) in the same rounds."""
    cases = {
        "python -c pass (the interpreter alone)": [sys.executable, "-c", "pass"],
        "rollouts --help": [sys.executable, "-m", "commands", "--help"],
        "rollouts collect --help": [sys.executable, "-m", "commands", "collect", "--help"],
        "rollouts process --help": [sys.executable, "-m", "commands", "process", "--help"],
        "rollouts tune --help": [sys.executable, "-m", "commands", "tune", "--help"],
        "usage error (rollouts collect, no input)": [sys.executable, "-m", "commands", "collect"],
    }
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
    for _ in range(repeats):  # round-robin, so a busy moment of a shared machine hits every case alike
        for name, cmd in cases.items():
            runs[name].append(cpu_timed(cmd, env))
    base = statistics.median(w for w, _, _ in runs[next(iter(cases))])
    print(f"\nfirst seconds (median of {repeats}; target < 0.3 s wall on an idle machine):")
    print("| command | wall s | CPU s | wall - interpreter s | wall / interpreter | exit code |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in runs.items():
        wall, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall - base:.2f} | {wall / base:.1f} | {rows[-1][2]} |")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started, done


def server_start(seeded: bool, env: dict[str, str]) -> float:
    """Seconds from `prefect server start` on a new PREFECT_HOME to its first healthy answer."""
    import httpx

    from commands import prefect_db
    from commands.server import _free_port

    prefect_home = Path(tempfile.mkdtemp(prefix="prefect-home-")) / "prefect"
    if seeded and not prefect_db.seed(prefect_home, env={}):
        raise SystemExit(f"no schema snapshot for this Prefect ({prefect_db.snapshot_path().name})")
    port = _free_port(0)
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    if seeded:
        env.update(prefect_db.first_start())  # as `rollouts` starts it: at the head revision, block types in it
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1.0).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"prefect server start exited with code {server.returncode}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="runs in all, the first one included (default 6)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--server-starts", type=int, default=2, help="pairs of new-server starts (default 2)")
    parser.add_argument("--help-repeats", type=int, default=7, help="runs of each --help (default 7)")
    parser.add_argument("--help-only", action="store_true", help="only the --help and usage-error timings")
    args = parser.parse_args()
    from bench.cpu_window import yardstick
    from rollouts.sim.launch import start_sim_server

    home = tempfile.mkdtemp(prefix="rollouts-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(ROLLOUTS_HOME=home, PYTHONPATH=str(ROOT))
    env.pop("ROLLOUTS_SERVER", None)
    work = Path(tempfile.mkdtemp(prefix="rollouts-startup-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"responses_create_params": {"input": f"What is {i} + 2?"}, "expected_answer": str(i + 2)})
            + "\n"
            for i in range(args.prompts)
        )
    )
    print(f"CPU yardstick (fixed pure-Python loop, lower is faster): {yardstick():.0f} ms")
    help_table(env, args.help_repeats)
    if args.help_only:
        return
    imported = [timed_with_cpu([sys.executable, "-c", "import flows.collect"], env) for _ in range(3)]
    imports = [wall for wall, _, _ in imported]
    walls: list[float] = []
    cpus: list[float] = []
    phases: list[dict[str, float]] = []
    try:
        with start_sim_server(latency_ms=0, seed=0) as server:
            for i in range(args.runs):
                cmd = [
                    sys.executable,
                    "-m",
                    "commands",
                    "collect",
                    str(prompts),
                    "--model-url",
                    server.url,
                    "--model",
                    "sim-model",
                    "--num-repeats",
                    "2",
                    "--out",
                    str(work / "runs"),
                    "--run-name",
                    f"startup-{i}",
                    "--no-progress",
                    "--verbose",
                ]
                wall, cpu, done = timed_with_cpu(cmd, env)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"run {i} failed with exit code {done.returncode}")
                walls.append(wall)
                cpus.append(cpu)
                line = next((x for x in done.stderr.splitlines() if x.startswith("time by phase: ")), "")
                phases.append({name: float(s) for name, s in PHASE.findall(line[len("time by phase: ") :])})
    finally:
        subprocess.run([sys.executable, "-m", "commands", "server", "stop"], env=env, cwd=ROOT, capture_output=True)
    later = walls[1:]
    import_wall = statistics.median(imports)
    print(
        f"{args.prompts} prompts x 2 repeats, simulated server at 0 ms; `import flows.collect` alone: "
        f"median {import_wall:.1f} s, {statistics.median(cpu for _, cpu, _ in imported):.2f} CPU s"
    )
    print("| run | wall s | wall / import alone | CPU s of the command (the Prefect server's not counted) |")
    print("|---|---:|---:|---:|")
    first = f"{walls[0]:.1f} | {walls[0] / import_wall:.1f} | {cpus[0]:.2f}"
    print(f"| first (starts the local Prefect server) | {first} |")
    if later:
        print(
            f"| later, median of {len(later)} (min-max {min(later):.1f}-{max(later):.1f}) | "
            f"{statistics.median(later):.1f} | {statistics.median(later) / import_wall:.1f} | "
            f"{statistics.median(cpus[1:]):.2f} |"
        )
    seeded: list[float] = []
    migrating: list[float] = []
    for _ in range(args.server_starts):
        seeded.append(server_start(True, env))
        migrating.append(server_start(False, env))
    if seeded:
        print(
            f"\na new Prefect server answers after: {statistics.median(seeded):.1f} s with its database from the "
            f"schema snapshot, {statistics.median(migrating):.1f} s running its migrations (medians of "
            f"{len(seeded)}; ratio {statistics.median(seeded) / statistics.median(migrating):.2f})"
        )
    names = list(dict.fromkeys(name for p in phases for name in p))
    print("\nphases (--verbose), first run | median of the later runs, s:")
    for name in names:
        rest = [p[name] for p in phases[1:] if name in p]
        print(f"  {name:<58} {phases[0].get(name, 0.0):6.2f} | {statistics.median(rest) if rest else 0.0:6.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: collection throughput of the real flow against the simulated server, beside a bare aiohttp client.

    python bench/collect_throughput.py                     # threads at --parallel 64, 256, 1024; processes 1, 2 at 1024
    python bench/collect_throughput.py --parallel 256      # one setting, threads
    python bench/collect_throughput.py --parallel 1024 --task-runner processes --workers 1,2
    python bench/collect_throughput.py --parallel 256 --py-spy 10   # also where the collector's CPU goes, by layer

Every setting runs as a pair in this invocation, against one simulated server: first the bare client
(`bench/bare_client.py`: aiohttp, the same requests, the same math check, nothing else), then the real
`collect-rollouts` flow, each in a fresh child process with its own embedded Prefect server for the flow. Both
are measured in their steady window, from the first request to the last response: the rate is rollouts / window
and the CPU is the collector's (the process, plus its worker processes with `--task-runner processes`) between the
window's edges, sampled by a thread (`bench/cpu_window.py`), so start-up and shutdown are not counted. The Prefect
API server's CPU in the same window is its own column, and so is the simulated model server's over each run
(the bare client's in brackets): on a small machine it shares the cores, and bounds what any client can reach. A
fixed pure-Python loop, timed at the start and the end, says how fast this machine's cores are today (the CPU
yardstick).
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.cpu_window import CpuSampler, rollout_window, yardstick  # noqa: E402


def write_prompts(path: Path, prompts: int) -> None:
    from bench.bare_client import prompt_text

    with path.open("w") as fh:
        for i in range(prompts):
            question, answer = prompt_text(i)
            fh.write(json.dumps({"responses_create_params": {"input": question}, "expected_answer": answer}) + "\n")


def announce_steady(runs: Path) -> None:
    """Print `STEADY` once the first generation (or inline-verified rollout) lands, so the parent can start a profiler
    on the steady state."""
    while not any(f.stat().st_size for stage in ("generations", "rollouts") for f in runs.glob(f"*/{stage}/*.jsonl")):
        time.sleep(0.05)
    print("STEADY", flush=True)


class GcClock:
    """Each cyclic garbage collection's wall-clock end, generation and seconds (gc.callbacks), to sum over a window."""

    def __init__(self) -> None:
        import gc

        self.events: list[tuple[float, int, float]] = []
        self._started = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.events.append((time.time(), info["generation"], time.perf_counter() - self._started))

    def between(self, first: float, last: float) -> tuple[list[float], list[int]]:
        """(seconds, collections) per generation 0, 1, 2 for the collections that ended inside [first, last]."""
        seconds, counts = [0.0, 0.0, 0.0], [0, 0, 0]
        for at, generation, took in self.events:
            if first <= at <= last:
                seconds[generation] += took
                counts[generation] += 1
        return seconds, counts


def child(args: argparse.Namespace) -> None:
    """One measured collection through the flow; prints a RESULT JSON line."""
    gc_clock = GcClock()
    imported = time.perf_counter()
    from commands.collect import prefect_defaults

    prefect_defaults()
    from prefect.settings import temporary_settings

    from flows.collect import collect_rollouts
    from rollouts.config import CollectConfig

    import_s = time.perf_counter() - imported
    if os.environ.get("BENCH_GC"):  # an experiment: "gen0,gen1,gen2" thresholds, and/or "freeze" (gc.freeze now)
        import gc

        spec = os.environ["BENCH_GC"].split(",")
        if "freeze" in spec:
            gc.collect()
            gc.freeze()
        numbers = [int(x) for x in spec if x.isdigit()]
        if numbers:
            gc.set_threshold(*numbers)
    work = Path(args.workdir)
    prompts = work / "prompts.jsonl"
    write_prompts(prompts, args.rollouts // args.repeats)
    config = CollectConfig(
        input=str(prompts),
        out=str(work / "runs"),
        model_url=args.url,
        model="sim-model",
        num_repeats=args.repeats,
        parallel=args.parallel,
        temperature=0.7,
        seed=1,
        shard_size=args.shard_size,
        max_concurrent_shards=args.max_concurrent_shards,
        task_runner=args.task_runner[0],
        workers=args.workers,
        run_name=f"bench-{args.parallel}",
        objective="rl",
    )
    threading.Thread(target=announce_steady, args=(work / "runs",), daemon=True).start()
    t0 = time.time()
    with CpuSampler(children=True) as sampler, temporary_settings(updates={"flows.heartbeat_frequency": None}):
        summary = collect_rollouts(config)
    wall = time.time() - t0
    first, last = rollout_window(summary.run_url)
    cpu, api_cpu = sampler.cpu_between(first, last)
    gc_seconds, gc_counts = gc_clock.between(first, last)
    ok = max(summary.rollouts_ok, 1)
    print(
        "RESULT "
        + json.dumps(
            {
                "rollouts": summary.rollouts_ok,
                "failed": summary.rollouts_failed,
                "steady_rps": summary.rollouts_ok / (last - first),
                "cpu_ms_per_rollout": 1000 * cpu / ok,
                "api_cpu_ms_per_rollout": 1000 * api_cpu / ok,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "import_s": import_s,
                "startup_s": first - t0,
                "wall_s": wall,
                "mean_reward": summary.mean_reward,
                "gc_s": [round(x, 3) for x in gc_seconds],
                "gc_counts": gc_counts,
            }
        ),
        flush=True,
    )


def run_child(cmd: list[str], spy: float, label: str, spy_dir: Path | None) -> dict:
    """Run a child to its RESULT line; with `spy`, record it with py-spy for that many seconds once it is steady."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    drain.start()
    result, spy_proc = None, None
    for line in proc.stdout:
        if line.startswith("STEADY") and spy and spy_dir is not None:
            spy_dir.mkdir(parents=True, exist_ok=True)
            spy_proc = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--rate",
                    "100",
                    "--native",
                    "--subprocesses",
                    "--format",
                    "raw",
                    "--duration",
                    str(int(spy)),
                    "--output",
                    str(spy_dir / f"{label}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(spy_dir / f"{label}.log").open("w"),
            )
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    proc.wait()
    drain.join()
    if spy_proc is not None:
        spy_proc.wait()
    if result is None:
        print("".join(err)[-4000:], file=sys.stderr)
        raise SystemExit(f"benchmark child {label} failed")
    return result


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def settings(args: argparse.Namespace) -> list[tuple[str, int | None, int]]:
    """(task runner, workers, parallel) to run: threads at each --parallel, processes at each --workers."""
    parallels = args.parallel or [64, 256, 1024]
    runners = args.task_runner or (["threads", "processes"] if not args.parallel else ["threads"])
    workers = [int(w) for w in (args.workers or "1,2").split(",")]
    out: list[tuple[str, int | None, int]] = []
    for runner in runners:
        if runner == "threads":
            out += [("threads", None, p) for p in parallels]
        else:  # by default the process runs go at the largest setting only
            for p in parallels if args.parallel else [max(parallels)]:
                out += [("processes", w, p) for w in workers]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, action="append", help="settings to run (default 64, 256, 1024)")
    parser.add_argument(
        "--task-runner",
        action="append",
        choices=["threads", "processes"],
        help="task runners to run (default: threads, and processes at the largest --parallel)",
    )
    parser.add_argument("--workers", help="comma list of --workers for the processes runs (default 1,2)")
    parser.add_argument("--rollouts", type=int, help="rollouts per setting (default max(5000, 40 x parallel))")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--max-concurrent-shards", type=int, default=4)
    parser.add_argument(
        "--py-spy",
        type=float,
        default=0,
        metavar="SECONDS",
        help="record the collector with py-spy for this long in its steady state, print CPU by layer "
        "(py-spy pauses the process per sample: rates of a profiled run are not figures)",
    )
    parser.add_argument("--spy-dir", default=str(ROOT / "bench" / "out"), help="where py-spy's raw stacks go")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.parallel = args.parallel[0]
        args.workers = int(args.workers) if args.workers else None
        child(args)
        return
    from rollouts.sim.launch import start_sim_server

    spy_dir = Path(args.spy_dir) if args.py_spy else None
    yard_before = yardstick()
    rows = []
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        for runner, workers, parallel in settings(args):
            rollouts = args.rollouts or max(5000, 40 * parallel)
            label = f"{runner}{workers or ''}-p{parallel}"
            sim = psutil.Process(server.process.pid)
            sim_cpu = cpu_seconds(sim)
            bare = run_child(
                [
                    sys.executable,
                    str(ROOT / "bench" / "bare_client.py"),
                    "--url",
                    server.url,
                    "--parallel",
                    str(parallel),
                    "--rollouts",
                    str(rollouts),
                    "--repeats",
                    str(args.repeats),
                ],
                args.py_spy,
                f"bare-p{parallel}",
                spy_dir,
            )
            bare["sim_cpu_ms_per_rollout"], sim_cpu = 1000 * (cpu_seconds(sim) - sim_cpu) / rollouts, cpu_seconds(sim)
            with tempfile.TemporaryDirectory() as work:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--parallel",
                    str(parallel),
                    "--rollouts",
                    str(rollouts),
                    "--repeats",
                    str(args.repeats),
                    "--shard-size",
                    str(args.shard_size),
                    "--task-runner",
                    runner,
                    "--max-concurrent-shards",
                    str(args.max_concurrent_shards),
                    "--url",
                    server.url,
                    "--workdir",
                    work,
                ]
                if workers:
                    cmd += ["--workers", str(workers)]
                ours = run_child(cmd, args.py_spy, label, spy_dir)
                ours["sim_cpu_ms_per_rollout"] = 1000 * (cpu_seconds(sim) - sim_cpu) / rollouts
            rows.append((runner, workers, parallel, ours, bare))
            print(
                f"{label}: {ours['steady_rps']:.0f} r/s ({ours['steady_rps'] / bare['steady_rps']:.2f} of bare), "
                f"{ours['cpu_ms_per_rollout']:.2f} ms CPU/r "
                f"({ours['cpu_ms_per_rollout'] / bare['cpu_ms_per_rollout']:.1f}x bare), "
                f"cyclic GC in the steady window {ours['gc_s']} s in {ours['gc_counts']} collections "
                "(generations 0, 1, 2)",
                file=sys.stderr,
                flush=True,
            )
    yard_after = yardstick()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"latency {args.latency_ms:.0f} ms, {args.repeats} repeats/prompt, math verification, "
        f"shard size {args.shard_size}"
    )
    print(
        "CPU yardstick (fixed pure-Python loop, lower is faster): "
        f"{yard_before:.0f} ms before, {yard_after:.0f} ms after"
    )
    print(
        "| runner | parallel | rollouts | r/s | bare r/s | rate / bare | ideal r/s | CPU ms/r | bare CPU ms/r "
        "| CPU / bare | API server CPU ms/r | model server CPU ms/r (bare) | peak RSS MB | start-up s | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for runner, workers, parallel, r, b in rows:
        name = runner if workers is None else f"{runner} x{workers}"
        ideal = parallel / (args.latency_ms / 1000) if args.latency_ms else float("inf")
        print(
            f"| {name} | {parallel} | {r['rollouts']} | {r['steady_rps']:.0f} | {b['steady_rps']:.0f} "
            f"| {r['steady_rps'] / b['steady_rps']:.2f} | {ideal:.0f} | {r['cpu_ms_per_rollout']:.2f} "
            f"| {b['cpu_ms_per_rollout']:.2f} | {r['cpu_ms_per_rollout'] / b['cpu_ms_per_rollout']:.1f} "
            f"| {r['api_cpu_ms_per_rollout']:.2f} | {r['sim_cpu_ms_per_rollout']:.2f} "
            f"({b['sim_cpu_ms_per_rollout']:.2f}) "
            f"| {r['peak_rss_mb']:.0f} | {r['startup_s']:.1f} | {r['wall_s']:.1f} |"
        )
    if spy_dir is not None:
        from bench.spy_layers import report

        for file in sorted(spy_dir.glob("*.txt")):
            print(report(file))


if __name__ == "__main__":
    main()

"""Benchmark: what the run report's charts cost, per chart, beside writing the profile's own files (its CSVs and JSON).

    python bench/report_charts.py                    # a 10-prompt run (2 repeats), 5 fresh processes
    python bench/report_charts.py --prompts 2000 --repeats 4 --processes 3
    python bench/report_charts.py --cprofile 25      # and the top functions of one process's chart drawing
    python bench/report_charts.py --against REV      # and REV's rollouts/report/charts.py, alternating, same processes

The run is real: the collector's core loop (no Prefect) against the simulated server (0 ms, 200 ms for `--slow`),
written to a temporary run directory, then profiled once. Each measuring process is fresh (as a `rollouts collect`
is), reads the profile first, then times, in this order:

- importing the charts module (with whatever it imports on its first chart: matplotlib for a revision that used it);
- the bare baseline: writing the profile's files (`write_profile`: profile.json and its tables as CSV) to a
  temporary folder, once cold and once warm;
- each chart in the order the report draws them, then all of them again (warm);
- the profile stage as a whole (`rollouts.stages.profile.profile_run`: profile, files, charts, report) in another fresh
  process, beside `python -c pass` (the interpreter alone) started the same way.

The ratio "charts / bare" divides the first pass over the charts (import included) by the warm baseline of the same
process, so figures from different days of this machine (its cores vary by up to ~2x) compare; `--against REV`
measures that revision's rollouts/report/charts.py in the same invocation, its processes alternating with this
tree's. Times are wall clock; the CPU column is the process's CPU time over the same span (steadier when other work
shares the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def collect(work: Path, url: str, prompts: int, repeats: int) -> str:
    from rollouts.config import CollectConfig
    from rollouts.stages.inline import collect_plan
    from rollouts.stages.shard import plan_run

    path = work / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"responses_create_params": {"input": f"What is {i} + 2?"}, "expected_answer": str(i + 2)})
            + "\n"
            for i in range(prompts)
        )
    )
    config = CollectConfig(
        input=str(path),
        out=str(work / "runs"),
        model_url=url,
        model="sim-model",
        num_repeats=repeats,
        parallel=64,
        temperature=0.7,
        seed=1,
        run_name="charts",
    )
    plan = plan_run(config)
    asyncio.run(collect_plan(plan))
    return str(work / "runs" / "charts")


CPU: dict[str, float] = {}


def ms(fn, key: str | None = None) -> tuple[float, object]:
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if key:
        CPU[key] = 1000 * (time.process_time() - cpu)
    return 1000 * (time.perf_counter() - started), out


def bare_files(profile: dict) -> None:
    from rollouts.report.metrics import write_profile
    from rollouts.storage import Store

    with tempfile.TemporaryDirectory() as folder:
        write_profile(Store(folder), profile)


def load_charts(path: str | None):
    """This tree's rollouts.report.charts, or the module at `path` (another revision's file) standing in for it."""
    import importlib.util

    import rollouts.report.charts

    if not path:
        return rollouts.report.charts
    spec = importlib.util.spec_from_file_location("rollouts.report.charts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["rollouts.report.charts"] = rollouts.report.charts = module
    return module


CHARTS = {"throughput": "throughput_chart", "latency CDF": "latency_cdf_chart", "rewards": "reward_chart"}
ARGUMENTS = {"throughput": "timeline", "latency CDF": "latency_cdf_ms", "rewards": "rewards"}


def child_charts(run: str, cprofile: int, charts_file: str | None) -> None:
    from rollouts.report.metrics import profile_frame, read_run_frame
    from rollouts.storage import Store
    from rollouts.tune.aimd import read_trace

    store = Store(run)
    profile = profile_frame(read_run_frame(store, flat=True), None, read_trace(store))
    result: dict[str, object] = {"heavy_before": [m for m in ("matplotlib", "numpy") if m in sys.modules]}
    started, cpu = time.perf_counter(), time.process_time()
    charts = load_charts(charts_file)
    if hasattr(charts, "_figure"):  # a revision drawing with matplotlib imports it on its first chart: count it here
        __import__("matplotlib.figure") and __import__("matplotlib.backends.backend_agg")
    result["import_ms"] = 1000 * (time.perf_counter() - started)
    result["import_cpu_ms"] = 1000 * (time.process_time() - cpu)
    result["bare_cold_ms"] = ms(lambda: bare_files(profile))[0]
    result["bare_warm_ms"] = ms(lambda: bare_files(profile))[0]
    draw = {name: functools.partial(getattr(charts, fn), profile[ARGUMENTS[name]]) for name, fn in CHARTS.items()}
    profiler = cProfile.Profile() if cprofile else None
    if profiler:
        profiler.enable()
    first = {name: ms(fn, name) for name, fn in draw.items()}
    if profiler:
        profiler.disable()
    result["first_ms"] = {name: t for name, (t, _) in first.items()}
    result["first_cpu_ms"] = dict(CPU)
    result["bytes"] = {name: len(chart or b"") for name, (_, chart) in first.items()}
    result["warm_ms"] = {name: ms(fn)[0] for name, fn in draw.items()}
    result["profile_charts_ms"] = ms(lambda: charts.profile_charts(profile))[0]
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(cprofile)
        print(out.getvalue(), file=sys.stderr)
    print("RESULT " + json.dumps(result), flush=True)


def child_stage(run: str, charts_file: str | None) -> None:
    import shutil

    from rollouts.stages import profile as report
    from rollouts.stages.profile import profile_run
    from rollouts.storage import Store

    report.profile_charts = load_charts(charts_file).profile_charts

    with tempfile.TemporaryDirectory() as copy:
        shutil.copytree(run, copy, dirs_exist_ok=True)
        cpu = time.process_time()
        elapsed, result = ms(lambda: profile_run(Store(copy)))
        cpu = 1000 * (time.process_time() - cpu)
        charts = [f for f in result.files if f.endswith((".png", ".svg"))]
    print(
        "RESULT "
        + json.dumps(
            {"stage_ms": elapsed, "stage_cpu_ms": cpu, "charts": len(charts), "matplotlib": "matplotlib" in sys.modules}
        ),
        flush=True,
    )


def bare_process() -> float:
    """Wall ms of `python -c pass`, started as the measuring processes are."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, cwd=ROOT)
    return 1000 * (time.perf_counter() - started)


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(done.stderr[-3000:])
    if done.stderr.strip() and "--cprofile" in args:
        print(done.stderr)
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--slow", action="store_true", help="200 ms per reply: a run of several windows (a timeline)")
    parser.add_argument("--processes", type=int, default=5, help="fresh measuring processes of each kind (default 5)")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the top N functions of one process")
    parser.add_argument("--child", choices=("charts", "stage"), help=argparse.SUPPRESS)
    parser.add_argument("--against", metavar="REV", help="also measure this git revision's rollouts/report/charts.py")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--charts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "charts":
        child_charts(args.run, args.cprofile, args.charts_file)
        return
    if args.child == "stage":
        child_stage(args.run, args.charts_file)
        return
    from bench.cpu_window import yardstick
    from rollouts.sim.launch import start_sim_server

    print(f"CPU yardstick (fixed pure-Python loop, lower is faster): {yardstick():.0f} ms")
    with tempfile.TemporaryDirectory() as work:
        with start_sim_server(latency_ms=200 if args.slow else 0, seed=0) as server:
            run = collect(Path(work), server.url, args.prompts, args.repeats)
        versions = {"this tree": None}
        if args.against:
            old = Path(work) / "charts_against.py"
            old.write_text(
                subprocess.run(
                    ["git", "show", f"{args.against}:rollouts/report/charts.py"],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            versions = {args.against: str(old), **versions}
        if args.cprofile:
            run_child("--child", "charts", "--run", run, "--cprofile", str(args.cprofile))
        results: dict[str, tuple[list[dict], list[dict]]] = {label: ([], []) for label in versions}
        bare: list[float] = []
        for _ in range(args.processes):
            bare.append(bare_process())
            for label, path in versions.items():
                extra = ["--charts-file", path] if path else []
                results[label][0].append(run_child("--child", "charts", "--run", run, *extra))
                results[label][1].append(run_child("--child", "stage", "--run", run, *extra))
    print(f"{args.prompts} prompts x {args.repeats} repeats; medians of {args.processes} fresh processes each")
    print(f"bare process (`python -c pass`): median {statistics.median(bare):.0f} ms")
    for label, (charts, stages) in results.items():
        report(label, charts, stages, statistics.median(bare))


def report(label: str, charts: list[dict], stages: list[dict], bare_process_ms: float) -> None:
    med = statistics.median
    print(f"\n{label} (imported before the charts: {charts[0]['heavy_before'] or 'neither matplotlib nor numpy'})")
    print("| what | first in the process ms | CPU ms | warm ms | KB |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| import the charts module (and matplotlib, if it draws with it) | {med(c['import_ms'] for c in charts):.1f} "
        f"| {med(c['import_cpu_ms'] for c in charts):.1f} | | |"
    )
    print(
        f"| bare: write the profile's CSVs and JSON | {med(c['bare_cold_ms'] for c in charts):.1f} | | "
        f"{med(c['bare_warm_ms'] for c in charts):.1f} | |"
    )
    for name in CHARTS:
        kb = charts[0]["bytes"][name] / 1024
        print(
            f"| {name} | {med(c['first_ms'][name] for c in charts):.1f} "
            f"| {med(c['first_cpu_ms'][name] for c in charts):.1f} | "
            f"{med(c['warm_ms'][name] for c in charts):.1f} | {f'{kb:.0f}' if kb else 'not drawn'} |"
        )
    first = med(c["import_ms"] + sum(c["first_ms"].values()) for c in charts)
    cpu = med(c["import_cpu_ms"] + sum(c["first_cpu_ms"].values()) for c in charts)
    warm = med(sum(c["warm_ms"].values()) for c in charts)
    bare = med(c["bare_warm_ms"] for c in charts)
    print(f"| all charts, import included | {first:.1f} | {cpu:.1f} | {warm:.1f} | |")
    print(
        f"charts / bare (writing the profile's files): first pass {first / bare:.1f}x, warm {warm / bare:.1f}x "
        f"(profile_charts, warm: {med(c['profile_charts_ms'] for c in charts):.1f} ms)"
    )
    runs = ", ".join(f"{s['stage_ms']:.0f}" for s in stages)
    stage = med(s["stage_ms"] for s in stages)
    print(
        f"profile stage (profile_run) in a fresh process: median {stage:.0f} ms, CPU "
        f"{med(s['stage_cpu_ms'] for s in stages):.0f} ms (runs: {runs}), {stages[0]['charts']} charts, "
        f"matplotlib imported: {stages[0]['matplotlib']}; / bare process {stage / bare_process_ms:.1f}x"
    )


if __name__ == "__main__":
    main()

"""Benchmark: what the run report's PNG charts cost, per chart, beside one empty matplotlib figure saved to PNG.

    python bench/report_charts.py                    # a 10-prompt run (2 repeats), 5 fresh processes
    python bench/report_charts.py --prompts 2000 --repeats 4 --processes 3
    python bench/report_charts.py --cprofile 25      # and the top functions of one process's chart rendering
    python bench/report_charts.py --against main     # and main's rollouts/report/charts.py, alternating, same processes

The run is real: the collector's core loop (no Prefect) against the simulated server (0 ms), written to a temporary
run directory, then profiled once. Each measuring process is fresh (as a `rollouts collect` is), imports the
report module and reads the profile first, then times, in this order:

- importing matplotlib's figure and Agg canvas (what the first chart of a process pays on top of drawing);
- the bare baseline: one empty 8x4 in figure saved to PNG, once cold (the process's first figure) and once warm;
- each chart of `profile_charts` in the order the report draws them, then all of them again (warm);
- the profile stage as a whole (`rollouts.stages.profile.profile_run`: profile, files, charts, report) in another fresh
  process, nothing imported beforehand but the report module.

The ratio "charts / bare" divides the first pass over the charts by the warm bare figure of the same process, so
figures from different days of this machine (its cores vary by up to ~2x) compare; `--against REV` measures that
revision's rollouts/report/charts.py in the same invocation, its processes alternating with this tree's. Times are wall
clock; the CPU column is the process's CPU time over the same span (steadier when other work shares the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
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


def bare_figure() -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


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


def child_charts(run: str, cprofile: int, charts_file: str | None) -> None:
    charts = load_charts(charts_file)
    from rollouts.report.metrics import profile_frame, read_run_frame
    from rollouts.storage import Store
    from rollouts.tune.aimd import read_trace

    store = Store(run)
    profile = profile_frame(read_run_frame(store, flat=True), None, read_trace(store))
    draw = {
        "throughput.png": lambda: charts.throughput_chart(profile["timeline"]),
        "latency_cdf.png": lambda: charts.latency_cdf_chart(profile["latency_cdf_ms"]),
        "rewards.png": lambda: charts.reward_chart(profile["rewards"]),
    }
    result: dict[str, object] = {"imported_before": "matplotlib" in sys.modules}
    result["import_ms"] = ms(lambda: __import__("matplotlib.figure") and __import__("matplotlib.backends.backend_agg"))[
        0
    ]
    result["bare_cold_ms"] = ms(bare_figure)[0]
    result["bare_warm_ms"] = ms(bare_figure)[0]
    profiler = cProfile.Profile() if cprofile else None
    if profiler:
        profiler.enable()
    first = {name: ms(fn, name) for name, fn in draw.items()}
    if profiler:
        profiler.disable()
    result["first_ms"] = {name: t for name, (t, _) in first.items()}
    result["first_cpu_ms"] = dict(CPU)
    result["bytes"] = {name: len(png or b"") for name, (_, png) in first.items()}
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
        elapsed, result = ms(lambda: profile_run(Store(copy)))
        pngs = [f for f in result.files if f.endswith(".png")]
    print(
        "RESULT "
        + json.dumps({"stage_ms": elapsed, "charts": len(pngs), "matplotlib_imported": "matplotlib" in sys.modules}),
        flush=True,
    )


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
        with start_sim_server(latency_ms=0, seed=0) as server:
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
        for _ in range(args.processes):
            for label, path in versions.items():
                extra = ["--charts-file", path] if path else []
                results[label][0].append(run_child("--child", "charts", "--run", run, *extra))
                results[label][1].append(run_child("--child", "stage", "--run", run, *extra))
    print(f"{args.prompts} prompts x {args.repeats} repeats; medians of {args.processes} fresh processes each")
    for label, (charts, stages) in results.items():
        report(label, charts, stages)


def report(label: str, charts: list[dict], stages: list[dict]) -> None:
    med = statistics.median
    names = list(charts[0]["first_ms"])
    print(f"\n{label} (matplotlib imported before the charts: {charts[0]['imported_before']})")
    print("| what | first in the process ms | CPU ms | warm ms | PNG KB |")
    print("|---|---:|---:|---:|---:|")
    print(f"| import matplotlib (figure, Agg) | {med(c['import_ms'] for c in charts):.0f} | | | |")
    print(
        f"| bare: one empty 8x4 figure to PNG | {med(c['bare_cold_ms'] for c in charts):.0f} | | "
        f"{med(c['bare_warm_ms'] for c in charts):.1f} | |"
    )
    for name in names:
        kb = charts[0]["bytes"][name] / 1024
        print(
            f"| {name} | {med(c['first_ms'][name] for c in charts):.1f} "
            f"| {med(c['first_cpu_ms'][name] for c in charts):.1f} | "
            f"{med(c['warm_ms'][name] for c in charts):.1f} | {f'{kb:.0f}' if kb else 'not drawn'} |"
        )
    first = med(sum(c["first_ms"].values()) for c in charts)
    cpu = med(sum(c["first_cpu_ms"].values()) for c in charts)
    warm = med(sum(c["warm_ms"].values()) for c in charts)
    bare = med(c["bare_warm_ms"] for c in charts)
    print(f"| all charts | {first:.0f} | {cpu:.0f} | {warm:.0f} | |")
    print(
        f"charts / bare warm figure: first pass {first / bare:.1f}x, warm {warm / bare:.1f}x "
        f"(profile_charts, warm: {med(c['profile_charts_ms'] for c in charts):.0f} ms)"
    )
    runs = ", ".join(f"{s['stage_ms']:.0f}" for s in stages)
    print(
        f"profile stage (profile_run) in a fresh process: median {med(s['stage_ms'] for s in stages):.0f} ms "
        f"(runs: {runs}), {stages[0]['charts']} charts; "
        f"cold import + bare cold figure: {med(c['import_ms'] + c['bare_cold_ms'] for c in charts):.0f} ms"
    )


if __name__ == "__main__":
    main()

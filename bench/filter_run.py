"""Benchmark: the filter and format stages of a collection run of 1,000,000 rollouts, with the collector's real rows.

    python bench/filter_run.py [--rows 1000000] [--sample 25600] [--keep DIR]

1. Sample: the real `collect-rollouts` flow collects `--sample` prompts (1 repeat, `--parallel 1024`, shard size
   256, objective rl) against the simulated server at 0 ms latency, as bench/collect_memory.py does.
2. Replica: its shard files are copied until the run holds `--rows` rollouts in 256-row shards (rollouts/ and the
   empty failures/ files, as the collector leaves them), each copy with its own `_ng_task_index` and `rollout_id`:
   the same row shape, row size and file count as a real collection of that size.
3. In a fresh process each: `filter_run` + `format_run` of that run (seconds, rows/s, peak RSS), and a bare baseline
   that reads the same files with `polars.scan_ndjson` and the filter's typed schema. The ratio filter/baseline is
   printed beside the absolute figure, since this machine's speed varies from day to day; CPU seconds (all threads)
   too, since other jobs on the 2 cores stretch wall time more than CPU time.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARD_ROWS = 256
_TASK = re.compile(rb'"_ng_task_index":(\d+)')
_ROLLOUT = re.compile(rb'"_ng_rollout_index":(\d+)')
_ID = re.compile(rb'"rollout_id":"[0-9a-f]+"')


def collect_sample(work: Path, prompts: int) -> Path:
    """The real collector on `prompts` prompts; returns the run directory."""
    work.mkdir(parents=True, exist_ok=True)
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / "bench")!r})
from pathlib import Path
from collect_memory import write_prompts
from commands.collect import prefect_defaults
prefect_defaults()
from prefect.settings import temporary_settings
from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from rollouts.sim.launch import start_sim_server
work = Path({str(work)!r})
write_prompts(work / "prompts.jsonl", {prompts})
with start_sim_server(latency_ms=0, seed=0) as server, temporary_settings(
    updates={{"flows.heartbeat_frequency": None}}
):
    config = CollectConfig(input=str(work / "prompts.jsonl"), out=str(work / "runs"), model_url=server.url,
                           model="sim-model", num_repeats=1, parallel=1024, temperature=0.7, seed=1,
                           shard_size={SHARD_ROWS}, run_name="sample", objective="rl")
    collect_rollouts(config)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        sys.exit(f"sample collection failed:\n{done.stderr[-4000:]}")
    return work / "runs" / "sample"


def replicate(sample: Path, run: Path, rows: int) -> int:
    """Copies of the sample's shards, renumbered, until `rows` rollouts in SHARD_ROWS-row shards; returns the files."""
    from rollouts.records import rollout_id

    manifest = json.loads((sample / "manifest.json").read_text())
    run_id = manifest["run_id"]
    shards = [p.read_bytes().splitlines() for p in sorted((sample / "rollouts").glob("*.jsonl"))]
    per_copy = sum(len(s) for s in shards)
    if any(len(s) != SHARD_ROWS for s in shards):
        sys.exit("the sample's shards must be full: pick --sample as a multiple of 256")
    (run / "rollouts").mkdir(parents=True)
    (run / "failures").mkdir()
    written = index = 0
    while written < rows:
        copy, shard = divmod(index, len(shards))
        offset = copy * per_copy
        lines = shards[shard][: rows - written]

        def renumber(line: bytes, offset: int = offset) -> bytes:
            task = int(_TASK.search(line).group(1)) + offset  # type: ignore[union-attr]
            rollout = int(_ROLLOUT.search(line).group(1))  # type: ignore[union-attr]
            line = _TASK.sub(b'"_ng_task_index":%d' % task, line, count=1)
            return _ID.sub(b'"rollout_id":"%s"' % rollout_id(run_id, task, rollout).encode(), line, count=1)

        name = f"{index:05d}.jsonl"
        (run / "rollouts" / name).write_bytes(b"\n".join(renumber(line) for line in lines) + b"\n")
        (run / "failures" / name).write_bytes(b"")
        written += len(lines)
        index += 1
    manifest["prompts"] = written
    (run / "manifest.json").write_text(json.dumps(manifest))
    return index


def stage(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as a JSON line (CPU: all threads, imports excluded)."""
    import polars  # noqa: F401  (imported before the clock starts, as rollouts imports it)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    if args.stage == "baseline":
        import polars as pl

        from rollouts.process.frame import TYPED_SCHEMA

        files = sorted(str(p) for p in Path(args.run, "rollouts").glob("*.jsonl"))
        rows = pl.scan_ndjson(files, schema=TYPED_SCHEMA).collect().height  # every typed field parsed, nothing else
        extra: dict[str, object] = {}
    else:
        from rollouts.config import CollectConfig
        from rollouts.run import RunRef
        from rollouts.stages.filter import filter_run
        from rollouts.stages.format import format_run

        manifest = json.loads(Path(args.run, "manifest.json").read_text())
        run = RunRef(
            run_id=manifest["run_id"], run_url=args.run, config=CollectConfig.model_validate(manifest["config"])
        )
        selections = filter_run(run)
        filtered = time.perf_counter() - start
        outputs = [format_run(run, s) for s in selections]
        rows = selections[0].loaded.rows
        extra = {"filter_s": filtered, "outputs": {o.objective: o.rows for o in outputs}}
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime - cpu0
    print(json.dumps({"stage": args.stage, "seconds": seconds, "cpu_s": cpu, "rows": rows, "rss_mb": rss_mb, **extra}))


def run_stage(name: str, run: Path) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--run", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        sys.exit(f"stage {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=25_600, help="prompts the real collector runs (multiple of 256)")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the sample and the replica here")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure filter and baseline this many times, alternating"
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        base = args.keep or Path(tmp)
        run = base / f"run-{args.rows}"
        if not (run / "manifest.json").exists():
            t = time.perf_counter()
            sample = base / "sample" / "runs" / "sample"
            if not (sample / "manifest.json").exists():
                sample = collect_sample(base / "sample", args.sample)
            print(f"sample: {args.sample:,} prompts collected in {time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            shutil.rmtree(run, ignore_errors=True)
            files = replicate(sample, run, args.rows)
            size = sum(p.stat().st_size for p in (run / "rollouts").glob("*.jsonl")) / 1e9
            print(
                f"replica: {args.rows:,} rollouts in {files:,} shards (+ {files:,} empty failures files), "
                f"{size:.2f} GB JSONL, built in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        for i in range(args.repeat):
            shutil.rmtree(run / "train", ignore_errors=True)
            base_r = run_stage("baseline", run)
            r = run_stage("filter", run)
            ratio = r["filter_s"] / base_r["seconds"]
            print(
                f"[{i + 1}] filter {r['filter_s']:.1f} s ({r['rows'] / r['filter_s']:,.0f} rows/s, "
                f"{ratio:.1f}x the baseline), "
                f"filter+format {r['seconds']:.1f} s ({r['cpu_s']:.0f} s CPU, "
                f"{r['cpu_s'] / base_r['cpu_s']:.1f}x the baseline's), "
                f"peak RSS {r['rss_mb']:.0f} MB, outputs {r['outputs']}; "
                f"baseline scan_ndjson {base_r['seconds']:.1f} s "
                f"({base_r['rows'] / base_r['seconds']:,.0f} rows/s, {base_r['cpu_s']:.0f} s CPU, "
                f"peak RSS {base_r['rss_mb']:.0f} MB)",
                flush=True,
            )


if __name__ == "__main__":
    main()

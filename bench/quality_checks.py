"""Benchmark: rollout health checks over 1,000,000 rollouts replicated from real rows, beside a plain read_ndjson.

    python bench/quality_checks.py [--rows 1000000] [--keep DIR] [--template RUN_OR_JSONL] [--defects 0.03]
                                   [--baseline-rows 100000] [--baseline-memory-gb 12]

1. Template: real rows from the collector (`rollouts collect`) against the simulated server (`--reasoning`, 0 ms):
   the bundled math, calculator and kv_store prompts x 4 repeats with --return-tokens and --env calculator (tool
   calls, reasoning items, token ids on every model call), plus the calculator prompts with --max-output-tokens 30
   (length-truncated rows). --template uses any run folder or rollouts JSONL instead.
2. Replica: one JSONL of --rows rollouts, the template's groups copied with new task indices and rollout ids; a
   fraction --defects of the rows replaced by defects built from template rows (a loop at the token limit, a
   reasoning loop, a reasoning-only answer, zero output tokens, a leaked </think>, unparseable tool arguments, the
   same tool error three times, a token count off by 5), so every check has rows to fire on.
3. Each measurement in a fresh process (imports excluded): `check_path` + `write_quality` over the file; and a plain
   `polars.read_ndjson` of the same file under a memory cap (its default call refuses these rows, see below, so it
   reads with infer_schema_length=None). When the baseline cannot hold the whole file, both run again on its first
   --baseline-rows rows, so the ratio always compares the same file.
The machine is shared: the load average is printed with every figure, and CPU seconds (all threads) beside wall time.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rollouts package, not an installed one
PROMPTS = ("math_prompts.jsonl", "calculator_prompts.jsonl", "kv_store_prompts.jsonl")
_TASK = re.compile(rb'"_ng_task_index":\s*(\d+)')
_ROLLOUT = re.compile(rb'"_ng_rollout_index":\s*(\d+)')
_ID = re.compile(rb'"rollout_id":\s*"[^"]*"')
TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
LOOP = "Let me double-check: 12 + 30 = 42, so the total stays 42. "


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ROLLOUTS_HOME": str(work / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }


def collect_template(work: Path) -> list[Path]:
    """Two real collections against the simulated server; returns their run folders."""
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join((ROOT / "rollouts" / "data" / name).read_text() for name in PROMPTS))
    calculator = work / "calculator.jsonl"
    calculator.write_text((ROOT / "rollouts" / "data" / "calculator_prompts.jsonl").read_text())
    sim = subprocess.Popen(
        [sys.executable, "-m", "rollouts.sim", "--port", "0", "--latency-ms", "0", "--reasoning"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        line = sim.stdout.readline() if sim.stdout else ""
        match = re.search(r"(http://\S+/v1)", line)
        if not match:
            sys.exit(f"the simulated server did not start: {line!r}")
        runs = []
        for name, source, extra in (
            ("sample", prompts, ["--num-repeats", "4"]),
            ("truncated", calculator, ["--num-repeats", "1", "--max-output-tokens", "30"]),
        ):
            cmd = [
                sys.executable,
                "-m",
                "commands",
                "collect",
                str(source),
                "--model-url",
                match.group(1),
                "--model",
                "sim-model",
                "--return-tokens",
                "--env",
                "calculator",
                "--out",
                str(work / "runs"),
                "--run-name",
                name,
                "--no-progress",
                *extra,
            ]
            done = subprocess.run(cmd, cwd=ROOT, env=_env(work), capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"collection {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
            runs.append(work / "runs" / name)
        return runs
    finally:
        os.killpg(sim.pid, signal.SIGTERM)
        sim.wait(10)
        subprocess.run(
            [sys.executable, "-m", "commands", "server", "stop"],
            cwd=ROOT,
            env=_env(work),
            capture_output=True,
            check=False,
        )


def template_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        files = sorted((path / "rollouts").glob("*.jsonl")) if path.is_dir() else [path]
        for file in files:
            rows += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("response") and r.get("status", "ok") == "ok"]


def _first(rows: list[dict[str, Any]], test: Any) -> dict[str, Any]:
    return copy.deepcopy(next(r for r in rows if test(r)))


def _items(row: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item for item in row["response"]["output"] if item.get("type") == kind]


def defects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One crafted defect per check, each from a real row (see the module docstring)."""
    plain = lambda r: [i["type"] for i in r["response"]["output"]] == ["reasoning", "message"]  # noqa: E731
    tools = lambda r: any(i["type"] == "function_call" for i in r["response"]["output"])  # noqa: E731
    out = []
    runaway = _first(rows, plain)
    _items(runaway, "message")[-1]["content"][0]["text"] += " " + LOOP * 40
    runaway["response"] |= {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    runaway |= {"finish_reason": "length", "end_reason": "length"}
    looping = _first(rows, plain)
    _items(looping, "reasoning")[0]["summary"][0]["text"] = "Wait, let me recount the digits. " * 60
    empty = _first(rows, plain)
    thought, message = _items(empty, "reasoning")[0], _items(empty, "message")[-1]
    empty["response"]["output"] = [thought | {k: message[k] for k in TOKEN_FIELDS if k in message}]
    zero = _first(rows, plain)
    _items(zero, "message")[-1]["content"][0]["text"] = ""
    for item in zero["response"]["output"]:
        for key in TOKEN_FIELDS:
            item.pop(key, None)
    zero["response"]["usage"]["output_tokens"] = 0
    leak = _first(rows, plain)
    text = _items(leak, "message")[-1]["content"][0]
    text["text"] = f"<think>{_items(leak, 'reasoning')[0]['summary'][0]['text']}</think>{text['text']}"
    malformed = _first(rows, tools)
    call = _items(malformed, "function_call")[0]
    call["arguments"] = call["arguments"][:-3]
    errors = _first(rows, tools)
    # The tool-calling turn made three times; its token ids stay on the last copy, so the counts still agree.
    tokens = {
        k: v
        for item in errors["response"]["output"]
        if item["type"] != "message"
        for k, v in item.items()
        if k in TOKEN_FIELDS
    }
    first_call = {k: v for k, v in _items(errors, "function_call")[0].items() if k not in TOKEN_FIELDS}
    loop_items = []
    for at in range(3):
        call_id = f"{first_call['call_id']}_{at}"
        loop_items += [
            first_call | {"call_id": call_id, "id": f"fc_{call_id}"} | (tokens if at == 2 else {}),
            {"type": "function_call_output", "call_id": call_id, "output": "Error: unsupported expression"},
        ]
    errors["response"]["output"] = loop_items + [i for i in errors["response"]["output"] if i["type"] == "message"]
    miscounted = _first(rows, plain)
    miscounted["response"]["usage"]["output_tokens"] += 5
    out += [runaway, looping, empty, zero, leak, malformed, errors, miscounted]
    return out


def _split(line: bytes) -> tuple[bytes, bytes, bytes, int]:
    """A template line as (before the task index, between it and the rollout id, after), and its rollout index."""
    task, rid = _TASK.search(line), _ID.search(line)
    rollout = _ROLLOUT.search(line)
    if not (task and rid and rollout):
        raise ValueError("template rows need _ng_task_index, _ng_rollout_index and rollout_id")
    if task.start() > rid.start():
        raise ValueError("expected _ng_task_index before rollout_id")
    return (
        line[: task.start()] + b'"_ng_task_index":',
        line[task.end() : rid.start()] + b'"rollout_id":"',
        b'"' + line[rid.end() :],
        int(rollout.group(1)),
    )


def replicate(rows: list[dict[str, Any]], out: Path, count: int, defect_rate: float) -> dict[str, int]:
    """Write `count` rollouts to `out` (template groups renumbered, defects mixed in); returns rows per kind."""
    rows = sorted(rows, key=lambda r: (r["_ng_task_index"], r["_ng_rollout_index"]))
    parts = [_split(json.dumps(r, separators=(",", ":")).encode()) for r in rows]
    tasks = sorted({r["_ng_task_index"] for r in rows})
    slot = {t: i for i, t in enumerate(tasks)}
    bad = [_split(json.dumps(r, separators=(",", ":")).encode()) for r in defects(rows)]
    rng = random.Random(0)
    kinds = {"template": 0, **{f"defect{i}": 0 for i in range(len(bad))}}
    written = 0
    with out.open("wb") as handle:
        while written < count:
            block = []
            for row, (before, middle, after, rollout) in zip(rows, parts, strict=True):
                if written >= count:
                    break
                task = (written // len(rows)) * len(tasks) + slot[row["_ng_task_index"]]
                if rng.random() < defect_rate:
                    kind = rng.randrange(len(bad))
                    before, middle, after, _ = bad[kind]
                    kinds[f"defect{kind}"] += 1
                else:
                    kinds["template"] += 1
                rid = hashlib.sha256(f"bench/{task}/{rollout}".encode()).hexdigest()[:20].encode()
                block.append(b"".join((before, str(task).encode(), middle, rid, after)))
                written += 1
            handle.write(b"\n".join(block) + b"\n")
    return kinds


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def stage(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as a JSON line (imports excluded from the clock). Both stages run with
    the allocator setting `rollouts check` uses (rollouts.allocator), so the ratio compares like with like."""
    from rollouts.allocator import ENV, keep_freed_pages

    keep_freed_pages()
    import polars as pl

    from rollouts.quality import check_path, write_quality
    from rollouts.quality.engine import default_workers

    extra: dict[str, Any] = {"allocator": os.environ.get(ENV)}
    cpu0, start = _cpu(), time.perf_counter()
    if args.stage == "check":
        extra["workers"] = default_workers()  # as `rollouts check` runs it
        result = check_path(args.file, workers=extra["workers"])
        extra["check_s"] = time.perf_counter() - start
        write_quality(result, args.out)
        summary = result.summary()
        extra |= {
            "rows": result.checked,
            "verdicts": summary["verdicts"],
            "fired": {k: v["fired"] for k, v in summary["checks"].items()},
        }
    else:
        limit = int(args.memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            extra["rows"] = pl.read_ndjson(args.file).height
            extra["default_call"] = "ok"
        except pl.exceptions.PolarsError as exc:  # types are read from the first 100 rows only
            extra["default_call"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            cpu0, start = _cpu(), time.perf_counter()  # time the call that reads the file, not the failed one
            extra["rows"] = pl.read_ndjson(args.file, infer_schema_length=None).height
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker's
    print(
        json.dumps(
            {"stage": args.stage, "seconds": seconds, "cpu_s": cpu, "rss_mb": rss_mb, "worker_rss_mb": worker_rss_mb}
            | extra
        )
    )


def measure(name: str, file: Path, out: Path, memory_gb: float) -> dict[str, Any] | None:
    load = os.getloadavg()[0]
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        name,
        "--file",
        str(file),
        "--out",
        str(out),
        "--memory-gb",
        str(memory_gb),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        print(f"  {name} on {file.name}: failed ({done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
        return None
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["load"] = (load, os.getloadavg()[0])
    return figures


def report(label: str, check: dict[str, Any], base: dict[str, Any] | None, rows: int) -> None:
    print(
        f"{label}: check + write {check['seconds']:.1f} s ({check['check_s']:.1f} s checking, {check['cpu_s']:.0f} s "
        f"CPU, {rows / check['seconds']:,.0f} rollouts/s, {check['workers']} worker processes, peak RSS "
        f"{check['rss_mb']:.0f} MB + largest worker {check['worker_rss_mb']:.0f} MB, load "
        f"{check['load'][0]:.1f}->{check['load'][1]:.1f})",
        flush=True,
    )
    if base is None:
        print("  baseline: read_ndjson could not hold this file under the memory cap", flush=True)
        return
    print(
        f"  baseline read_ndjson {base['seconds']:.1f} s ({base['cpu_s']:.0f} s CPU, peak RSS {base['rss_mb']:.0f} MB, "
        f"load {base['load'][0]:.1f}->{base['load'][1]:.1f}; default call: {base['default_call']})",
        flush=True,
    )
    print(
        f"  ratio check/baseline: {check['seconds'] / base['seconds']:.2f} wall, {check['cpu_s'] / base['cpu_s']:.2f} "
        "CPU",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the template and the replica here")
    parser.add_argument("--template", type=Path, nargs="*", help="run folders or rollout JSONL files to replicate")
    parser.add_argument("--defects", type=float, default=0.03, help="fraction of rows replaced by crafted defects")
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--baseline-memory-gb", type=float, default=12.0)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--memory-gb", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        file = base / f"rollouts-{args.rows}.jsonl"
        if not file.exists():
            t = time.perf_counter()
            templates = (
                args.template
                or [
                    p
                    for p in (base / "template" / "runs" / n for n in ("sample", "truncated"))
                    if (p / "rollouts").is_dir()
                ]
                or collect_template(base / "template")
            )
            rows = template_rows(list(templates))
            kinds = replicate(rows, file, args.rows, args.defects)
            crafted = sum(kinds.values()) - kinds["template"]
            print(
                f"replica: {args.rows:,} rollouts from {len(rows)} real rows ({crafted:,} defects), "
                f"{file.stat().st_size / 1e9:.2f} GB, built in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        check = measure("check", file, base / "out-full", args.baseline_memory_gb)
        if check is None:
            sys.exit(1)
        print(f"polars allocator (_RJEM_MALLOC_CONF): {check['allocator']}", flush=True)
        print(f"verdicts: {check['verdicts']}; fired: {check['fired']}", flush=True)
        baseline = measure("baseline", file, base, args.baseline_memory_gb)
        report(f"{args.rows:,} rollouts", check, baseline, args.rows)
        if baseline is None and args.baseline_rows < args.rows:
            prefix = base / f"rollouts-{args.baseline_rows}.jsonl"
            with file.open("rb") as src, prefix.open("wb") as dst:
                for _, line in zip(range(args.baseline_rows), src, strict=False):
                    dst.write(line)
            small = measure("check", prefix, base / "out-prefix", args.baseline_memory_gb)
            small_base = measure("baseline", prefix, base, args.baseline_memory_gb)
            if small is not None:
                report(f"first {args.baseline_rows:,} rollouts of the same file", small, small_base, args.baseline_rows)


if __name__ == "__main__":
    main()

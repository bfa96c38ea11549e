"""Throughput of `rollouts process`: a synthetic run of 1,000,000 rollouts (250,000 prompts x 4), all three objectives.

    python bench/process_throughput.py [--prompts 250000] [--repeats 4] [--keep DIR] [--single-process]
    python bench/process_throughput.py --sizes 1000000,3000000,10000000

Builds the run as JSONL shards (rollouts/ and failures/, like a collection run) under --keep (reused by later runs of
the same shape: it says so; ~1.75 GB per 1M rollouts, delete it when done): the first shard line by line, every other
one a byte-level copy of it with fresh task indices and rollout ids (~15 s per 1M rollouts). Then runs each stage in
its own subprocess and prints wall time, rows/s and the stage's peak RSS (its own ru_maxrss):
  load  JSONL run -> the Parquet rollout frame (done once; every objective reads the frame)
  rl / sft / dpo  select + write the default formats from the frame
With --single-process, also runs the whole `process` (load once + rl, sft, dpo) in one process, as the CLI does,
beside the bare baseline: a plain `polars.read_ndjson` of the same files in its own process (ratio = process / read).
With --sizes, builds the largest run once (the smaller ones are its first shards, linked) and runs the whole
`process` at each size: seconds, rows/s and peak RSS per size say whether time is linear and memory flat; the
read_ndjson baseline runs up to --baseline-max rollouts (it holds the whole file in memory).
Rows: a system + user prompt, 1-3 model calls with token ids and logprobs on every call, 10% tool-call
conversations, reasoning items, LaTeX backslashes, 2% length-truncated, 0.5% failed; ~1.5 KB per line.
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
SHARD_PROMPTS = 2_500
BUILDER = 2  # the builder's version: a run built by another version is rebuilt, not reused
KINDS = ("rollouts", "failures")
TOOLS = [
    {
        "type": "function",
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    }
]


def _tokens(seed: int, n: int) -> tuple[str, str]:
    ids = ",".join(str((seed * 7919 + i * 104729) % 151_000) for i in range(n))
    logprobs = ",".join(f"-{((seed + i) % 97) / 50:.3f}" for i in range(n))
    return ids, logprobs


def _message(text: str, call: int, seed: int, status: str = "completed") -> str:
    gen, lp = _tokens(seed + call, 24)
    prompt_ids, _ = _tokens(seed, 16 + 24 * call)
    return (
        f'{{"type":"message","id":"msg_{seed}_{call}","role":"assistant","status":"{status}",'
        f'"content":[{{"type":"output_text","text":{json.dumps(text)},"annotations":[]}}],'
        f'"prompt_token_ids":[{prompt_ids}],"generation_token_ids":[{gen}],"generation_log_probs":[{lp}]}}'
    )


def rollout_line(task: int, rollout: int) -> str:
    seed = task * 31 + rollout
    a, b = task % 977, (task * 7) % 1009
    answer = a + b if (seed % 3) else a + b + 1
    reward = 1.0 if answer == a + b else 0.0
    if task % 5 == 0:
        reward = 0.5 * (seed % 3)  # graded rewards on some prompts
    prompt = (
        f'[{{"role":"system","content":"You are a careful math assistant. Put the final answer in \\\\boxed{{}}."}},'
        f'{{"role":"user","content":"Compute {a} + {b}. Show your work step by step."}}]'
    )
    steps = " ".join(f"Step {i}: we add the digits of the numbers carefully." for i in range(1 + seed % 4))
    text = f"{steps} So the result is \\boxed{{{answer}}}."
    reasoning = (
        f'{{"type":"reasoning","id":"rs_{seed}","summary":[{{"type":"summary_text","text":"Add {a} and {b}."}}]}}'
    )
    truncated = seed % 50 == 7
    if task % 10 == 3:  # a tool-call conversation: two model calls
        gen, lp = _tokens(seed, 24)
        prompt_ids, _ = _tokens(seed, 16)
        call = (
            f'{{"type":"function_call","id":"fc_{seed}","call_id":"call_{seed}","name":"calculator",'
            f'"arguments":{json.dumps(json.dumps({"expression": f"{a}+{b}"}))},"status":"completed",'
            f'"prompt_token_ids":[{prompt_ids}],"generation_token_ids":[{gen}],"generation_log_probs":[{lp}]}}'
        )
        result = f'{{"type":"function_call_output","call_id":"call_{seed}","output":"{answer}"}}'
        output = f"[{call},{result},{_message(text, 1, seed)}]"
        tools = json.dumps(TOOLS, separators=(",", ":"))
        params = f'{{"input":{prompt},"tools":{tools},"temperature":1.0}}'
    else:
        output = f"[{reasoning},{_message(text, 0, seed, 'incomplete' if truncated else 'completed')}]"
        params = f'{{"input":{prompt},"temperature":1.0}}'
    status = '"incomplete","incomplete_details":{"reason":"max_output_tokens"}' if truncated else '"completed"'
    return (
        f'{{"responses_create_params":{params},"agent_ref":{{"name":"math"}},"expected_answer":"{a + b}",'
        f'"_ng_task_index":{task},"_ng_rollout_index":{rollout},'
        f'"response":{{"id":"resp_{seed}","created_at":1767225600,"model":"bench-model","object":"response",'
        f'"output":{output},'
        f'"usage":{{"input_tokens":40,"output_tokens":{48 + 24 * (task % 10 == 3)},"total_tokens":88}},'
        f'"status":{status},"parallel_tool_calls":true,"tool_choice":"auto","tools":[]}},'
        f'"reward":{reward},"rollout_id":"r{task:07d}{rollout:02d}","status":"ok","attempts":1,'
        f'"finish_reason":"{"length" if truncated else "stop"}",'
        f'"timings":{{"queue_ms":1.0,"model_ms":812.5,"verify_ms":0.4,"total_ms":814.2}},"schema_version":1}}'
    )


def failed_line(task: int, rollout: int) -> str:
    return (
        f'{{"responses_create_params":{{"input":"Compute {task % 977} + 1."}},"_ng_task_index":{task},'
        f'"_ng_rollout_index":{rollout},"response":null,"reward":null,"rollout_id":"r{task:07d}{rollout:02d}",'
        '"status":"failed",'
        '"error":{"type":"ProviderError","message":"HTTP 503","status_code":503,"stage":"generate"},'
        f'"attempts":3,"schema_version":1}}'
    )


# What the process stage keys on, rewritten in every copy of the template shard: the task index (the group) and the
# rollout id (unique per row). Everything else (prompts, outputs, rewards, the failure pattern) repeats per shard: the
# groups keep their sizes, reward spreads and duplicate structure, so DPO pairs and group statistics stay realistic.
_KEYED = re.compile(rb'"_ng_task_index":(\d+)|"rollout_id":"r(\d{7})(\d{2})"')


def template_lines(kind: str, repeats: int) -> list[str]:
    """One shard of rows (SHARD_PROMPTS prompts x repeats) built line by line: the pattern every shard copies."""
    lines = []
    for task in range(SHARD_PROMPTS):
        for rollout in range(repeats):
            is_failed = (task * repeats + rollout) % 200 == 199
            if is_failed == (kind == "failures"):
                lines.append((failed_line if is_failed else rollout_line)(task, rollout))
    return lines


class Template:
    """A shard split at its keyed fields: each copy joins the static bytes with fresh task indices and rollout ids,
    at disk speed (no per-row formatting beyond the keys)."""

    def __init__(self, data: bytes) -> None:
        self.static: list[bytes] = []
        self.slots: list[tuple[bool, int, int]] = []  # (is rollout_id, task, rollout)
        at = 0
        for m in _KEYED.finditer(data):
            self.static.append(data[at : m.start()])
            if m.group(1) is not None:
                self.slots.append((False, int(m.group(1)), 0))
            else:
                self.slots.append((True, int(m.group(2)), int(m.group(3))))
            at = m.end()
        self.static.append(data[at:])

    def copy(self, offset: int) -> bytes:
        keys = [
            f'"rollout_id":"r{task + offset:07d}{rollout:02d}"'.encode()
            if is_id
            else f'"_ng_task_index":{task + offset}'.encode()
            for is_id, task, rollout in self.slots
        ]
        parts = [b""] * (len(self.static) + len(keys))
        parts[::2] = self.static
        parts[1::2] = keys
        return b"".join(parts)


def build_run(run: Path, prompts: int, repeats: int) -> int:
    """The run's shards: the first built line by line, the others copies of it with fresh keys (see Template)."""
    if prompts % SHARD_PROMPTS:
        sys.exit(f"--prompts must be a multiple of {SHARD_PROMPTS:,} (one shard)")
    counts = {}
    templates = {}
    for kind in KINDS:
        (run / kind).mkdir(parents=True, exist_ok=True)
        lines = template_lines(kind, repeats)
        counts[kind] = len(lines)
        templates[kind] = Template(("\n".join(lines) + "\n").encode())
    shards = prompts // SHARD_PROMPTS
    for shard in range(shards):
        for kind in KINDS:
            if counts[kind]:
                (run / kind / f"shard-{shard:05d}.jsonl").write_bytes(templates[kind].copy(shard * SHARD_PROMPTS))
    total = shards * sum(counts.values())
    manifest = {"run": "bench", "rollouts": total, "builder": BUILDER, "prompts": prompts, "repeats": repeats}
    (run / "manifest.json").write_text(json.dumps({**manifest, "rows_per_shard": sum(counts.values())}))
    return total


def reuse_or_build(run: Path, prompts: int, repeats: int) -> None:
    """Build the run, or reuse the one built there before with the same shape (and say so)."""
    manifest = run / "manifest.json"
    if manifest.exists():
        built = json.loads(manifest.read_text())
        if (built.get("builder"), built.get("prompts"), built.get("repeats")) == (BUILDER, prompts, repeats):
            print(f"reusing the run built before at {run} ({built['rollouts']:,} rollouts)", flush=True)
            return
        shutil.rmtree(run)
    t = time.perf_counter()
    n = build_run(run, prompts, repeats)
    size = sum(f.stat().st_size for f in run.rglob("*.jsonl")) / 1e9
    print(
        f"built {n:,} rollouts ({prompts:,} prompts x {repeats}), {size:.2f} GB JSONL in "
        f"{time.perf_counter() - t:.1f} s at {run} (kept: later runs reuse it; delete it when done)",
        flush=True,
    )


def stage(args: argparse.Namespace) -> None:
    """Child process: run one stage and print a JSON line with its figures."""
    sys.path.insert(0, str(ROOT))
    from rollouts.training import LoadedRollouts, ProcessConfig, load_rollouts, process_many, select, write_outputs

    start = time.perf_counter()
    if args.stage == "read_ndjson":
        import polars as pl

        # One read per folder, each inferring its own schema (a failure row's null response would type the column)
        frames = [pl.read_ndjson(sorted(str(f) for f in (Path(args.run) / kind).glob("*.jsonl"))) for kind in KINDS]
        rows, extra = sum(frame.height for frame in frames), {}
    elif args.stage == "load":
        loaded = load_rollouts([args.run], workdir=args.workdir)
        Path(args.workdir, "loaded.json").write_text(loaded.model_dump_json())
        rows, extra = loaded.rows, {}
    elif args.stage == "all":
        configs = [ProcessConfig(objective=o) for o in ("rl", "sft", "dpo")]
        results = process_many([args.run], configs, args.out, workdir=args.workdir)
        rows, extra = results[0].card.rows_in, {r.objective: r.card.rows_out for r in results}
    else:
        loaded = LoadedRollouts.model_validate_json(Path(args.workdir, "loaded.json").read_text())
        config = ProcessConfig(objective=args.stage)
        result = write_outputs(select(loaded, config), config, args.out)
        rows, extra = loaded.rows, {"out": result.card.rows_out, "unit": result.card.unit}
    seconds = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"stage": args.stage, "seconds": seconds, "rows": rows, "rss_gb": rss_gb, **extra}))


def link_run(full: Path, run: Path, shards: int) -> int:
    """A run of the first `shards` shards of `full`, as symlinks (what a smaller collection run would hold)."""
    for kind in KINDS:
        (run / kind).mkdir(parents=True, exist_ok=True)
        for source in sorted((full / kind).glob("*.jsonl"))[:shards]:
            target = run / kind / source.name
            if not target.exists():
                target.symlink_to(source)
    total = shards * json.loads((full / "manifest.json").read_text())["rows_per_shard"]
    (run / "manifest.json").write_text(json.dumps({"run": "bench", "rollouts": total}))
    return total


def _cached_run(cache: Path, prompts: int, repeats: int) -> Path | None:
    """The smallest run kept in `cache` by this builder with at least `prompts` prompts (its first shards serve)."""
    runs = []
    for manifest in cache.glob(f"run-*x{repeats}/manifest.json"):
        built = json.loads(manifest.read_text())
        if built.get("builder") == BUILDER and built.get("prompts", 0) >= prompts:
            runs.append((built["prompts"], manifest.parent))
    return min(runs)[1] if runs else None


def scale(args: argparse.Namespace, cache: Path, work: Path) -> None:
    """The whole `process` at each of --sizes rollouts; the read_ndjson baseline up to --baseline-max."""
    sizes = sorted(int(x) for x in args.sizes.split(","))
    per_shard = SHARD_PROMPTS * args.repeats
    prompts = -(-sizes[-1] // per_shard) * SHARD_PROMPTS
    full = _cached_run(cache, prompts, args.repeats)
    if full is None:
        full = cache / f"run-{prompts}x{args.repeats}"
        reuse_or_build(full, prompts, args.repeats)
    else:
        print(f"reusing the run built before at {full} (its first shards)", flush=True)
    print(
        f"{'rollouts':>11} {'GB':>6} {'process s':>9} {'rows/s':>9} {'peak RSS':>9} {'read_ndjson s':>13} {'ratio':>6}"
    )
    for size in sizes:
        shards = -(-size // per_shard)
        run = work / f"run-{size}"
        rows = link_run(full, run, shards)
        gb = sum(f.resolve().stat().st_size for f in run.rglob("*.jsonl")) / 1e9
        r = run_stage("all", run, work / f"work-{size}", work / f"out-{size}")
        shutil.rmtree(work / f"work-{size}", ignore_errors=True)
        shutil.rmtree(work / f"out-{size}", ignore_errors=True)
        read = run_stage("read_ndjson", run, work / "unused", work / "unused") if size <= args.baseline_max else None
        read_s = f"{read['seconds']:>13.1f}" if read else f"{'-':>13}"
        ratio = f"{r['seconds'] / read['seconds']:>6.2f}" if read else f"{'-':>6}"
        print(
            f"{rows:>11,} {gb:>6.2f} {r['seconds']:>9.1f} {r['rows'] / r['seconds']:>9,.0f} "
            f"{r['rss_gb']:>7.2f} GB {read_s} {ratio}",
            flush=True,
        )
        if read:
            print(f"{'':>11} read_ndjson peak RSS {read['rss_gb']:.2f} GB", flush=True)


def run_stage(name: str, run: Path, workdir: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--run", str(run), "--workdir", str(workdir), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"stage {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--keep",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rollouts-bench-process",
        help="where the generated run is kept and reused (default: %(default)s; ~1.75 GB per 1M rollouts)",
    )
    parser.add_argument("--single-process", action="store_true", help="also time load+rl+sft+dpo in one process")
    parser.add_argument("--sizes", help="comma-separated rollout counts: the whole process at each (see above)")
    parser.add_argument(
        "--baseline-max", type=int, default=1_000_000, help="largest size read_ndjson is timed at (~11 GB RSS at 1M)"
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage(args)
        return
    cache = args.keep
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        base = Path(tmp)
        if args.sizes:
            scale(args, cache, base)
            return
        run = cache / f"run-{args.prompts}x{args.repeats}"
        reuse_or_build(run, args.prompts, args.repeats)
        print(f"{'stage':<6} {'seconds':>8} {'rows/s':>10} {'peak RSS':>9}  output")
        total, peak = 0.0, 0.0
        for name in ("load", "rl", "sft", "dpo"):
            r = run_stage(name, run, base / "work", base / "out")
            total += r["seconds"]
            peak = max(peak, r["rss_gb"])
            out = f"{r['out']:,} {r['unit']}" if "out" in r else "frame"
            print(f"{name:<6} {r['seconds']:>8.1f} {r['rows'] / r['seconds']:>10,.0f} {r['rss_gb']:>7.2f} GB  {out}")
        print(f"{'total':<6} {total:>8.1f} {'':>10} {peak:>7.2f} GB  (target: < 60 s, < 4 GB)")
        if args.single_process:
            r = run_stage("all", run, base / "work-all", base / "out-all")
            read = run_stage("read_ndjson", run, base / "unused", base / "unused")
            print(f"single process (load + rl + sft + dpo): {r['seconds']:.1f} s, peak RSS {r['rss_gb']:.2f} GB")
            print(
                f"bare polars.read_ndjson of the same files: {read['seconds']:.1f} s, "
                f"peak RSS {read['rss_gb']:.2f} GB; "
                f"process / read_ndjson = {r['seconds'] / read['seconds']:.2f} (target <= 1.0)"
            )


if __name__ == "__main__":
    main()

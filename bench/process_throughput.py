"""Throughput of `rollouts process`: a synthetic run of 1,000,000 rollouts (250,000 prompts x 4), all three objectives.

    python bench/process_throughput.py [--prompts 250000] [--repeats 4] [--keep DIR] [--single-process]
    python bench/process_throughput.py --sizes 1000000,3000000,10000000 --keep /tmp/bench-10m   # scale (~1 h)

Builds the run as JSONL shards (rollouts/ and failures/, like a collection run) in a temp dir, then runs each stage in
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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD_PROMPTS = 2_500
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


def build_run(run: Path, prompts: int, repeats: int) -> int:
    (run / "rollouts").mkdir(parents=True)
    (run / "failures").mkdir()
    total = 0
    for shard, start in enumerate(range(0, prompts, SHARD_PROMPTS)):
        ok, failed = [], []
        for task in range(start, min(prompts, start + SHARD_PROMPTS)):
            for rollout in range(repeats):
                (failed if (task * repeats + rollout) % 200 == 199 else ok).append(
                    (failed_line if (task * repeats + rollout) % 200 == 199 else rollout_line)(task, rollout)
                )
        (run / "rollouts" / f"shard-{shard:05d}.jsonl").write_text("\n".join(ok) + "\n")
        if failed:
            (run / "failures" / f"shard-{shard:05d}.jsonl").write_text("\n".join(failed) + "\n")
        total += len(ok) + len(failed)
    (run / "manifest.json").write_text(json.dumps({"run": "bench", "rollouts": total}))
    return total


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
    total = 0
    for kind in KINDS:
        (run / kind).mkdir(parents=True, exist_ok=True)
        for source in sorted((full / kind).glob("*.jsonl"))[:shards]:
            target = run / kind / source.name
            if not target.exists():
                target.symlink_to(source)
            with source.open("rb") as fh:
                total += sum(1 for _ in fh)
    (run / "manifest.json").write_text(json.dumps({"run": "bench", "rollouts": total}))
    return total


def scale(args: argparse.Namespace, base: Path) -> None:
    """The whole `process` at each of --sizes rollouts; the read_ndjson baseline up to --baseline-max."""
    sizes = sorted(int(x) for x in args.sizes.split(","))
    prompts = -(-sizes[-1] // args.repeats)
    full = base / f"run-{sizes[-1]}"
    if not (full / "manifest.json").exists():
        t = time.perf_counter()
        n = build_run(full, prompts, args.repeats)
        size = sum(f.stat().st_size for f in full.rglob("*.jsonl")) / 1e9
        print(f"built {n:,} rollouts, {size:.2f} GB JSONL in {time.perf_counter() - t:.1f} s", flush=True)
    print(
        f"{'rollouts':>11} {'GB':>6} {'process s':>9} {'rows/s':>9} {'peak RSS':>9} {'read_ndjson s':>13} {'ratio':>6}"
    )
    for size in sizes:
        shards = -(-size // (SHARD_PROMPTS * args.repeats))
        run = full if size == sizes[-1] else base / f"run-{size}"
        rows = link_run(full, run, shards) if run != full else size
        gb = sum(f.resolve().stat().st_size for f in run.rglob("*.jsonl")) / 1e9
        for leftover in (base / f"work-{size}", base / f"out-{size}"):
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
        r = run_stage("all", run, base / f"work-{size}", base / f"out-{size}")
        read = run_stage("read_ndjson", run, base / "unused", base / "unused") if size <= args.baseline_max else None
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
    parser.add_argument("--keep", type=Path, help="build (or reuse) the run here instead of a temp dir")
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
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        base = args.keep or Path(tmp)
        if args.sizes:
            scale(args, base)
            return
        run = base / "run"
        if not (run / "manifest.json").exists():
            t = time.perf_counter()
            n = build_run(run, args.prompts, args.repeats)
            size = sum(f.stat().st_size for f in run.rglob("*.jsonl")) / 1e9
            print(
                f"built {n:,} rollouts ({args.prompts:,} prompts x {args.repeats}), "
                f"{size:.2f} GB JSONL in {time.perf_counter() - t:.1f} s"
            )
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

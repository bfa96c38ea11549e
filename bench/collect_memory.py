"""Benchmark: memory of the real flow in input size: peak RSS of a collection of 10k, 100k and 1M prompts.

    python bench/collect_memory.py                                  # 10k, 100k and 1M prompts (the 1M run is long)
    python bench/collect_memory.py --prompts 10000,100000 --census  # and which objects grew between checkpoints

Each size is a fresh child process running the `collect-rollouts` flow on 1 repeat per prompt against the simulated
server at 0 ms latency, `--parallel 1024`, the prompts streamed from a JSONL written beforehand. A thread samples the
RSS of the collector process, of its worker processes and of the Prefect API server every half second; the child
prints the peak so far each time the rollouts done cross a tenth of the run, the peak over the whole run (the
profile, filter and format stages included), and with `--census` the object types that grew most in the collector
between the first and the last checkpoint (gc.get_objects(): what is kept per prompt, if anything).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_prompts(path: Path, prompts: int) -> None:
    with path.open("w") as fh:
        for i in range(prompts):
            fh.write(
                f'{{"responses_create_params": {{"input": "What is {i} + {i + 7}?"}}, '
                f'"expected_answer": "{2 * i + 7}"}}\n'
            )


def census() -> Counter[str]:
    import gc

    return Counter(type(o).__qualname__ for o in gc.get_objects())


class RssWatch:
    """Peak RSS (MB) of this process, its multiprocessing workers and the Prefect API server, sampled in a thread."""

    def __init__(self) -> None:
        self.peak = {"collector": 0.0, "workers": 0.0, "api": 0.0}
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak["collector"] = max(self.peak["collector"], self._me.memory_info().rss / 2**20)
        workers = api = 0.0
        for child in self._me.children(recursive=True):
            try:
                cmd, rss = " ".join(child.cmdline()), child.memory_info().rss / 2**20
            except psutil.Error:
                continue
            if "uvicorn" in cmd:
                api += rss
            elif "spawn_main" in cmd:
                workers += rss
        self.peak["workers"] = max(self.peak["workers"], workers)
        self.peak["api"] = max(self.peak["api"], api)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def child(args: argparse.Namespace) -> None:
    from commands.collect import prefect_defaults

    prefect_defaults()
    from prefect.settings import temporary_settings

    from flows.collect import collect_rollouts
    from rollouts.collector.runtime import collector
    from rollouts.config import CollectConfig

    work = Path(args.workdir)
    prompts = work / "prompts.jsonl"
    write_prompts(prompts, args.prompts)
    config = CollectConfig(
        input=str(prompts),
        out=str(work / "runs"),
        model_url=args.url,
        model="sim-model",
        num_repeats=1,
        parallel=args.parallel,
        temperature=0.7,
        seed=1,
        shard_size=args.shard_size,
        run_name=f"memory-{args.prompts}",
        objective="rl",
    )
    board = collector().board
    censuses: list[tuple[int, Counter[str]]] = []

    def checkpoints(watch: RssWatch) -> None:
        step, mark, started = max(1, args.prompts // 10), 1, time.time()
        while mark <= 10:
            done = board.generated + board.failed
            if done >= mark * step:
                print(
                    "CHECKPOINT "
                    + json.dumps({"done": done, "seconds": round(time.time() - started, 1), **watch.peak}),
                    flush=True,
                )
                if args.census and mark in (1, 9):
                    censuses.append((done, census()))
                mark += 1
            time.sleep(0.2)

    t0 = time.time()
    with RssWatch() as watch, temporary_settings(updates={"flows.heartbeat_frequency": None}):
        threading.Thread(target=checkpoints, args=(watch,), daemon=True).start()
        summary = collect_rollouts(config)
    result = {"prompts": args.prompts, "rollouts": summary.rollouts_ok, "wall_s": time.time() - t0, **watch.peak}
    if len(censuses) == 2:
        (d0, c0), (d1, c1) = censuses
        grew = (c1 - c0).most_common(12)
        result["grew"] = {"between_done": [d0, d1], "objects": grew}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="10000,100000,1000000", help="comma list of run sizes")
    parser.add_argument("--parallel", type=int, default=1024)
    parser.add_argument("--shard-size", type=int, default=256, help="prompts per shard (the collector's default)")
    parser.add_argument("--census", action="store_true", help="object types that grew between checkpoints")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.prompts = int(args.prompts)
        child(args)
        return
    from rollouts.sim.launch import start_sim_server

    rows = []
    with start_sim_server(latency_ms=0, seed=0) as server:
        for size in (int(s) for s in args.prompts.split(",")):
            with tempfile.TemporaryDirectory() as work:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--prompts",
                    str(size),
                    "--parallel",
                    str(args.parallel),
                    "--shard-size",
                    str(args.shard_size),
                    "--url",
                    server.url,
                    "--workdir",
                    work,
                ]
                if args.census:
                    cmd.append("--census")
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ.copy()
                )
                result = None
                for line in proc.stdout:
                    if line.startswith("CHECKPOINT "):
                        print(f"{size} prompts: {line[len('CHECKPOINT ') :].strip()}", file=sys.stderr, flush=True)
                    elif line.startswith("RESULT "):
                        result = json.loads(line[len("RESULT ") :])
                err = proc.stderr.read()
                proc.wait()
                if result is None:
                    print(err[-4000:], file=sys.stderr)
                    raise SystemExit(f"memory benchmark child for {size} prompts failed")
                rows.append(result)
                if "grew" in result:
                    print(
                        f"{size} prompts, objects grown between {result['grew']['between_done']} done: "
                        f"{result['grew']['objects']}",
                        file=sys.stderr,
                    )
    print(f"1 repeat per prompt, 0 ms latency, --parallel {args.parallel}, shard size {args.shard_size}")
    print("| prompts | rollouts | wall s | collector peak RSS MB | worker processes MB | Prefect API server MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['prompts']:,} | {r['rollouts']:,} | {r['wall_s']:.0f} | {r['collector']:.0f} | {r['workers']:.0f} "
            f"| {r['api']:.0f} |"
        )


if __name__ == "__main__":
    main()

"""Collector processes (rollouts/collector/pool.py): real child processes against the simulated server on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rollouts.collector.pool import CollectorPool
from rollouts.collector.progress import ProgressBoard
from rollouts.config import CollectConfig
from rollouts.errors import Interrupted, WorkerLost
from rollouts.sim import SimConfig, serve_in_thread
from rollouts.stages.generate import generate_with
from rollouts.stages.shard import plan_run
from tests.integration.conftest import math_rows, write_jsonl


def plan(tmp_path: Path, url: str, prompts: int, **options):
    config = CollectConfig(
        input=str(write_jsonl(tmp_path / "prompts.jsonl", math_rows(prompts))),
        out=str(tmp_path / "runs"),
        model_url=url,
        model="sim-model",
        task_runner="processes",
        workers=2,
        **options,
    )
    return plan_run(config)


def rows(run_url: str) -> list[dict]:
    return [
        json.loads(line)
        for f in sorted((Path(run_url) / "rollouts").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def server_requests(url: str) -> int:
    """Requests the simulated server has received so far (its /stats)."""
    return httpx.get(f"{url.removesuffix('/v1')}/stats", timeout=30).json()["requests"]


@pytest.fixture
def pool():
    pool = CollectorPool(2, ProgressBoard(), generate_with)
    yield pool
    pool.close()


def test_shards_go_to_the_least_busy_process_and_count_on_the_parents_board(tmp_path, pool):
    url, stop = serve_in_thread(SimConfig(latency_ms=20, seed=3))
    try:
        work = plan(tmp_path, url, 8, shard_size=2, num_repeats=2, parallel=8)
        futures = [pool.submit(work.run, shard.shard, None) for shard in work.shards]
        results = [f.result(timeout=60) for f in futures]
    finally:
        stop()
    assert sorted(r.shard for r in results) == sorted(s.shard for s in work.shards)
    assert len(rows(work.run.run_url)) == 16
    snapshot = pool.board.snapshot()
    assert (snapshot.generated, snapshot.verified, snapshot.failed) == (16, 16, 0)
    assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids


def test_a_stop_reaches_the_processes_which_flush_and_end_with_interrupted(tmp_path, pool):
    url, stop = serve_in_thread(SimConfig(latency_ms=300, seed=3))
    try:
        work = plan(tmp_path, url, 400, shard_size=400, num_repeats=1, parallel=64)
        future = pool.submit(work.run, work.shards[0].shard, None)
        while pool.board.snapshot().generated < 8:  # under way
            time.sleep(0.05)
        requests = server_requests(url)
        pool.stop("stop requested by the test")
        with pytest.raises(Interrupted, match="stop requested by the test"):
            future.result(timeout=30)
        written = rows(work.run.run_url)
        assert 8 <= len(written) < 400 and len({r["rollout_id"] for r in written}) == len(written)
        # the stop is prompt: at most the 64 requests already on their way (--parallel) reach the server after it,
        # nothing new starts (counted by the server, not timed)
        assert server_requests(url) - requests <= 64
        pool.reset()  # the next run starts again
        pool.submit(work.run, work.shards[0].shard, None).result(timeout=120)
    finally:
        stop()
    assert len(rows(work.run.run_url)) == 400 == len({r["rollout_id"] for r in rows(work.run.run_url)})


def test_a_killed_process_fails_its_shards_with_worker_lost_and_is_replaced(tmp_path, pool):
    url, stop = serve_in_thread(SimConfig(latency_ms=300, seed=3))
    try:
        work = plan(tmp_path, url, 200, shard_size=100, num_repeats=1, parallel=32)
        futures = [pool.submit(work.run, shard.shard, None) for shard in work.shards]
        while pool.board.snapshot().generated < 4:
            time.sleep(0.05)
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60).shard)
            except WorkerLost as lost:
                assert lost.is_retryable and str(victim) in str(lost)
                outcomes.append("lost")
        assert outcomes.count("lost") == 1
        redo = [pool.submit(work.run, shard.shard, None) for shard in work.shards]  # a fresh process stands in
        assert [f.result(timeout=120).shard for f in redo] == [s.shard for s in work.shards]
    finally:
        stop()
    assert victim not in pool.pids and len(set(pool.pids)) == 2
    written = rows(work.run.run_url)
    assert len({r["rollout_id"] for r in written}) == 200 == len(written)  # resumed: nothing twice


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task_runner": "threads", "workers": 2}, "--workers is the number of collector processes"),
        ({"task_runner": "dask", "workers": 2}, "--dask-workers"),
        ({"task_runner": "processes", "parallel": "auto"}, "--parallel auto runs in one collector process"),
    ],
)
def test_options_that_would_do_nothing_are_refused(options, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        CollectConfig(input="p.jsonl", model_url="http://x/v1", model="m", **options)


def test_parallel_is_split_between_the_processes():
    config = CollectConfig(
        input="p.jsonl", model_url="http://x/v1", model="m", task_runner="processes", workers=3, parallel=1000
    )
    assert (config.processes, config.parallel_per_process) == (3, 334)


def test_a_profiled_run_gets_a_function_profile_part_from_each_process_that_ran_its_shards(tmp_path, pool):
    url, stop = serve_in_thread(SimConfig(latency_ms=10, seed=3))
    try:
        work = plan(tmp_path, url, 8, shard_size=2, num_repeats=2, parallel=8, profile=True)
        for future in [pool.submit(work.run, shard.shard, None) for shard in work.shards]:
            future.result(timeout=60)
    finally:
        stop()
    parts = sorted((Path(work.run.run_url) / "profile" / "functions").glob("*.json"))
    pids = {int(p.name.rsplit("-", 2)[-2]) for p in parts}
    assert pids and pids <= set(pool.pids)
    from rollouts.report.profiler import read_function_stats
    from rollouts.storage import Store

    stats, merged = read_function_stats(Store(work.run.run_url, None))
    assert merged == len(parts)
    rows = {(r["module"], r["function"]): r for r in stats.table()}
    rollout = next(
        r
        for (module, name), r in rows.items()
        if module.endswith("rollouts/stages/generate.py") and name.endswith("_rollout")
    )
    assert rollout["wall_ncall"] + rollout["cpu_ncall"] > 0  # the shards' own code, profiled where it ran


def test_the_rate_leaves_out_the_report_that_started_the_clock(monkeypatch):
    """A worker's first report brings several rollouts at once: counted over the instant since it arrived they read
    as a burst of thousands per second. The rate counts what came after it, over the time since."""
    from types import SimpleNamespace

    from rollouts.collector import progress

    now = [100.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: now[0]))  # this module's clock only
    board = ProgressBoard()
    board.reset(total=40)
    board.add(generated=4, verified=4)
    now[0] += 0.1
    assert board.snapshot().rate == 0.0  # not 4 / 0.1 s
    now[0] += 0.9
    board.add(generated=6, verified=6)
    assert board.snapshot().rate == 6.0 and board.snapshot().done == 10


PROBE_START = """
import sys


async def report_loaded(runtime, run, shard, auth):
    raise LookupError(",".join(name for name in ("prefect", "flows", "probe_main") if name in sys.modules))
"""
PROBE_MAIN = """
import sys

import prefect
from probe_start import report_loaded
from rollouts.collector.pool import CollectorPool
from rollouts.collector.progress import ProgressBoard
from rollouts.config import CollectConfig
from rollouts.stages.shard import plan_run

if __name__ == "__main__":
    config = CollectConfig(input="prompts.jsonl", out="runs", model_url=sys.argv[1], model="sim-model")
    run = plan_run(config).run
    pool = CollectorPool(1, ProgressBoard(), report_loaded)
    try:
        print("child has:", pool.submit(run, "shard-00000", None).exception(timeout=60))
    finally:
        pool.close()
"""


def test_a_collector_process_does_not_run_the_parents_main_module(tmp_path, sim):
    """A deployment's flow run is `python -m prefect.engine` (a script's main is the same case): spawn would run that
    main module again in every collector process, importing all of Prefect and the flow there for nothing."""
    write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    (tmp_path / "probe_start.py").write_text(PROBE_START)
    (tmp_path / "probe_main.py").write_text(PROBE_MAIN)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "probe_main.py", sim.url], env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "child has:", done.stdout

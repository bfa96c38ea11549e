"""Distributed engines: Dask from the command line on its default (embedded) Prefect server, and Ray giving the
same rollouts and rewards as the thread runner for a fixed seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import math_rows, run_rows, write_jsonl
from tests.integration.live_server import offline_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("board")]
ROOT = Path(__file__).resolve().parents[2]


def _outcomes(run_dir: Path) -> dict[str, tuple]:
    """Reward and output items of each rollout, without the response ids the server makes up per request."""

    def items(r: dict) -> str:
        return json.dumps(
            [{k: v for k, v in item.items() if k != "id"} for item in r["response"]["output"]], sort_keys=True
        )

    return {r["rollout_id"]: (r["reward"], items(r)) for r in run_rows(run_dir, "rollouts")}


def test_collector_processes_give_the_same_rollouts_and_rewards_as_threads(tmp_path, sim, live_client):
    from flows.collect import collect_rollouts
    from rollouts.collector.runtime import collector
    from rollouts.config import CollectConfig
    from tasks.generate import engine_of

    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(12))
    common = dict(
        input=str(src),
        model_url=sim.url,
        model="sim-model",
        num_repeats=3,
        shard_size=2,
        parallel=8,
        temperature=0.8,
        seed=11,
        max_concurrent_shards=2,
    )
    board = collector().board
    board.reset()
    processes = collect_rollouts(
        CollectConfig(out=str(tmp_path / "processes"), run_name="same", task_runner="processes", workers=2, **common)
    )
    run_id = json.loads((Path(processes.run_url) / "manifest.json").read_text())["run_id"]
    assert run_id not in collector()._limiters  # no shard of the run was generated on this process's loop
    snapshot = board.snapshot()  # the processes' counts reached this process's progress board as they went
    threads = collect_rollouts(CollectConfig(out=str(tmp_path / "threads"), run_name="same", **common))
    assert threads.status == processes.status == "completed" and processes.rollouts_ok == 36
    assert _outcomes(Path(processes.run_url)) == _outcomes(Path(threads.run_url))
    assert processes.mean_reward == threads.mean_reward
    assert (snapshot.generated, snapshot.verified, snapshot.failed) == (36, 36, 0)
    pool = engine_of(
        CollectConfig(out=str(tmp_path / "processes"), run_name="same", task_runner="processes", workers=2, **common)
    ).pool(collector())
    assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids


def test_dask_from_the_cli_with_the_embedded_server_runs_every_shard_and_shows_progress_at_the_true_rate(tmp_path):
    """`--task-runner dask` from the command line with no PREFECT_API_URL (the CLI's default setup): every one of
    the run's 8 shards runs on the 2 Dask workers, and the workers report their counts as rollouts finish, so the
    plain progress lines (every 10 s) show partial counts while the run goes on, at a rate the server allows
    (4 in flight x 0.5 s = 8 rollouts/s at most)."""
    import re

    from rollouts.sim.launch import start_sim_server

    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(80))
    env = offline_env(tempfile.mkdtemp(prefix="prefect-home-"))  # no PREFECT_API_URL: the CLI's default setup
    with start_sim_server(latency_ms=500, seed=0) as slow:
        cmd = [
            *(sys.executable, "-m", "commands", "collect", str(src), "--out", str(tmp_path / "runs")),
            *("--model-url", slow.url, "--model", "sim-model", "--num-repeats", "2", "--shard-size", "10"),
            *("--task-runner", "dask", "--dask-workers", "2", "--parallel", "4", "--run-name", "dask-cli"),
        ]  # no terminal: the progress display prints plain lines
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Server process did not start" not in done.stderr
    manifest = json.loads((tmp_path / "runs" / "dask-cli" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["shards"]) == 8
    assert manifest["counts"]["rollouts_ok"] == 160 and manifest["counts"]["rollouts_not_run"] == 0
    assert len(run_rows(tmp_path / "runs" / "dask-cli", "rollouts")) == 160
    lines = [tuple(map(int, m)) for m in re.findall(r"rollouts (\d+)/(\d+)\s+(\d+)/s", done.stderr)]
    assert any(0 < count < total for count, total, _ in lines), done.stderr[-3000:]
    assert all(rate <= 12 for _, _, rate in lines), lines


def test_ray_gives_the_same_rollouts_and_rewards_as_threads_and_shows_them_as_they_come(tmp_path, live_client):
    """For a fixed seed Ray gives the thread runner's rollouts and rewards. Its worker reports counts as rollouts
    finish: this process's board (what the progress bar and the plain lines show) moves through partial counts of
    the run's one shard, at a rate the server allows (2 in flight x 0.3 s = 6.7 rollouts/s at most), instead of
    0/N until the shard returns."""
    import threading

    from flows.collect import collect_rollouts
    from rollouts.collector.runtime import collector
    from rollouts.config import CollectConfig
    from rollouts.sim.launch import start_sim_server

    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(12))
    board, seen, finished = collector().board, [], threading.Event()

    def watch() -> None:
        while not finished.wait(0.1):
            snapshot = board.snapshot()
            seen.append((snapshot.done, snapshot.total, snapshot.rate))

    with start_sim_server(latency_ms=300, seed=0) as slow:
        common = dict(
            input=str(src),
            model_url=slow.url,
            model="sim-model",
            num_repeats=3,
            shard_size=12,  # one shard: without live counts the board jumps from 0 to 36 at its end
            parallel=2,
            temperature=0.8,
            seed=11,
        )
        threads = collect_rollouts(CollectConfig(out=str(tmp_path / "threads"), run_name="same", **common))
        board.reset()  # the board of this process counts the ray run only, as a command's does
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            on_ray = collect_rollouts(
                CollectConfig(out=str(tmp_path / "ray"), run_name="same", task_runner="ray", ray_workers=1, **common)
            )
        finally:
            finished.set()
            watcher.join()
    assert threads.status == on_ray.status == "completed" and on_ray.rollouts_ok == 36
    assert _outcomes(Path(on_ray.run_url)) == _outcomes(Path(threads.run_url))
    assert on_ray.mean_reward == threads.mean_reward
    partial = [(done, rate) for done, total, rate in seen if total == 36 and 0 < done < 36]
    assert len({done for done, _ in partial}) >= 3, seen[-20:]  # several steps seen while the shard ran
    assert all(rate <= 10 for _, rate in partial), partial

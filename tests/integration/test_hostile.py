"""Faults and attacks through the real command: signals, kill -9, two writers, hostile verifiers and inputs.

Each test runs `rollouts collect` (or another command) in a subprocess against servers on loopback, at small sizes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rollouts.sim.launch import start_sim_server
from tests.integration.conftest import math_rows, run_rows, write_jsonl

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def collect_command(src: Path, url: str, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "commands",
        "collect",
        str(src),
        "--model-url",
        url,
        "--model",
        "m",
        "--out",
        str(out),
        "--run-name",
        name,
        "--no-progress",
        "--objective",
        "rl",
        *extra,
    ]


def environment(prefect_server: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_server, **extra}


def start(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )


def lines_on_disk(run: Path) -> int:
    files = [f for folder in ("generations", "rollouts") for f in (run / folder).glob("*.jsonl")]
    return sum(len(f.read_bytes().splitlines()) for f in files)


def wait_for_lines(process: subprocess.Popen[bytes], run: Path, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if lines_on_disk(run) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached {count} lines (exit {process.poll()})")


def finish(process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return stderr.decode()


def manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())


def test_sigterm_stops_like_sigint_exits_143_and_marks_the_run_interrupted(tmp_path: Path, prefect_server: str) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(150))
    run = tmp_path / "runs" / "termed"
    env = environment(prefect_server)
    with start_sim_server(latency_ms=200, seed=0) as sim:
        command = collect_command(src, sim.url, tmp_path / "runs", "termed", "--num-repeats", "4", "--parallel", "32")
        process = start(command, env)
        wait_for_lines(process, run, 60)
        requests = sim.stats()["requests"]
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stderr = finish(process)
        took = time.monotonic() - signalled
        time.sleep(0.5)
        after = sim.stats()["requests"] - requests
        assert process.returncode == 143 and took < 15, (process.returncode, took, stderr[-2000:])
        assert "TerminationSignal" not in stderr and "terminated (SIGTERM)" in stderr
        assert after <= 32  # only what was already on its way
        written = manifest(run)
        assert written["status"] == "interrupted", written
        on_disk = len(run_rows(run, "rollouts"))
        assert written["counts"]["rollouts_ok"] == on_disk > 0  # not "0 of 600 verified" with rows on disk
        resumed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = run_rows(run, "rollouts")
    assert len(rows) == 600 and len({r["rollout_id"] for r in rows}) == 600


def flow_run_states(prefect_server: str, name: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": prefect_server}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        return [run.state.type.value for run in runs if run.state is not None]


def test_a_killed_run_s_flow_run_ends_crashed_at_the_next_start(tmp_path: Path, prefect_server: str) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(100))
    run = tmp_path / "runs" / "killed"
    env = environment(prefect_server)
    with start_sim_server(latency_ms=100, seed=0) as sim:
        command = collect_command(src, sim.url, tmp_path / "runs", "killed", "--num-repeats", "2", "--parallel", "16")
        process = start(command, env)
        wait_for_lines(process, run, 20)
        process.kill()
        process.wait()
        assert flow_run_states(prefect_server, "killed") == ["RUNNING"]
        resumed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(flow_run_states(prefect_server, "killed")) == ["COMPLETED", "CRASHED"]
    rows = run_rows(run, "rollouts")
    assert len(rows) == 200 and len({r["rollout_id"] for r in rows}) == 200


def test_two_commands_on_one_run_one_writer_the_other_exits_2_naming_the_holder(
    tmp_path: Path, prefect_server: str
) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(60))
    run = tmp_path / "runs" / "twice"
    env = environment(prefect_server)
    with start_sim_server(latency_ms=100, seed=0) as sim:
        command = collect_command(src, sim.url, tmp_path / "runs", "twice", "--num-repeats", "4", "--parallel", "16")
        first, second = start(command, env), start(command, env)
        errors = finish(first, timeout=300), finish(second, timeout=300)
        codes = sorted([first.returncode, second.returncode])
        assert codes == [0, 2], (codes, errors)
        refused = errors[0] if first.returncode == 2 else errors[1]
        assert "is being written by pid" in refused and " on " in refused and "since" in refused
        rows = run_rows(run, "rollouts")
        assert len(rows) == 240 and len({r["rollout_id"] for r in rows}) == 240
        assert manifest(run)["counts"]["rollouts_ok"] == 240
        assert not (run / ".lock").exists()  # released by its holder at the end


def test_the_lock_of_a_run_on_object_storage_is_a_conditional_create_with_a_lease(s3_endpoint: str) -> None:
    import s3fs

    from rollouts.errors import RunLockedError
    from rollouts.lock import RunLock
    from rollouts.storage import Store

    s3fs.S3FileSystem().mkdir("locks")
    first, second = RunLock(Store("s3://locks/run"), lease_s=0.6), RunLock(Store("s3://locks/run"))
    first.acquire()
    with pytest.raises(RunLockedError, match="pid"):
        second.acquire()
    time.sleep(1.0)  # renewed every 0.2 s: still held
    with pytest.raises(RunLockedError):
        second.acquire()
    first._stopped.set()  # the holder stops renewing (as a killed process would)
    time.sleep(1.0)
    second.acquire()  # expired lease: taken over
    first.release()  # not the holder any more: leaves the new lock alone
    assert second._read() is not None and second._read().token == second.holder.token  # type: ignore[union-attr]
    second.release()
    assert second._read() is None

"""Faults and attacks through the real command: signals, kill -9, two writers, hostile verifiers and inputs.

Each test runs `rollouts collect` (or another command) in a subprocess against servers on loopback, at small sizes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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
        "sim-model",
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
    run = tmp_path / "runs" / "reaped"  # a name no other test's flow run has on the shared server
    env = environment(prefect_server)
    with start_sim_server(latency_ms=100, seed=0) as sim:
        command = collect_command(src, sim.url, tmp_path / "runs", "reaped", "--num-repeats", "2", "--parallel", "16")
        process = start(command, env)
        wait_for_lines(process, run, 20)
        process.kill()
        finish(process)  # reaps it and closes its pipes
        assert flow_run_states(prefect_server, "reaped") == ["RUNNING"]
        resumed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(flow_run_states(prefect_server, "reaped")) == ["COMPLETED", "CRASHED"]
    rows = run_rows(run, "rollouts")
    assert len(rows) == 200 and len({r["rollout_id"] for r in rows}) == 200


def test_two_commands_on_one_run_one_writer_the_other_exits_2_naming_the_holder(
    tmp_path: Path, prefect_server: str
) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(60))
    run = tmp_path / "runs" / "twice"
    env = environment(prefect_server)
    # The writer holds the run for ~15 s (240 rollouts, 8 at a time, 0.5 s each): longer than any start-up skew
    # between the two commands on a busy machine. In 1.5 s, a second command slowed by the machine once found the
    # first already done and exited 0 with the run unchanged.
    with start_sim_server(latency_ms=500, seed=0) as sim:
        command = collect_command(src, sim.url, tmp_path / "runs", "twice", "--num-repeats", "4", "--parallel", "8")
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


# ---- hostile resources and model servers ----------------------------------------------------------------------

CALCULATE_TOOL = {
    "type": "function",
    "name": "calculate",
    "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}


def hostile_rows(answers: list[str], tools: bool = False) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"input": "What is 1 + 1?"}
    if tools:
        params["tools"] = [CALCULATE_TOOL]
    return [{"responses_create_params": params, "expected_answer": a, "task": i} for i, a in enumerate(answers)]


def run_command(command: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command run to its end from the repository root, its output captured as text, no standard input."""
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )


def collect_hostile(
    tmp_path: Path, prefect_server: str, server: Any, name: str, rows: list[dict[str, Any]], *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    done, run, took, _ = collect_hostile_measured(tmp_path, prefect_server, server, name, rows, *extra)
    return done, run, took


def collect_hostile_measured(
    tmp_path: Path, prefect_server: str, server: Any, name: str, rows: list[dict[str, Any]], *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path, float, float]:
    """The command's result, its run folder, its wall time and the peak RSS in MB of the command and its children.

    The peak is the command's own, read by a small launcher that forks it and waits for it (`wait4`). Waiting on a
    direct child of pytest would not do: a process forked from pytest starts with pytest's resident set as its high
    water mark (the kernel keeps it across exec), so the figure would be pytest's size, not the command's; and the
    session-wide RUSAGE_CHILDREN also holds every earlier test's children.
    """
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    command = collect_command(
        src,
        server.model_url,
        tmp_path / "runs",
        name,
        "--remote-env",
        f"hostile={server.url}",
        "--env",
        "hostile",
        "--num-repeats",
        "1",
        *extra,
    )
    started = time.monotonic()
    out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    peak_path = tmp_path / f"{name}.peak"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _PEAK_LAUNCHER, str(peak_path), *command],
            env=environment(prefect_server),
            cwd=ROOT,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        killer = threading.Timer(300, os.killpg, (child.pid, signal.SIGKILL))
        killer.start()
        try:
            child.wait()
        finally:
            killer.cancel()
    done = subprocess.CompletedProcess(
        command, child.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    )
    return done, tmp_path / "runs" / name, time.monotonic() - started, int(peak_path.read_text()) / 1024


# Forks the command, waits for it and writes its peak RSS (KiB, the command and its children) to argv[1].
_PEAK_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as peak:
    peak.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.fixture()
def hostile() -> Any:
    from tests.servers.hostile import HostileServer

    with HostileServer() as server:
        yield server


def test_non_finite_rewards_are_verifier_errors_and_every_resume_works(
    tmp_path: Path, prefect_server: str, hostile: Any
) -> None:
    rows = hostile_rows(["2"] * 7 + ["NaN", "Infinity", "1e400"])
    extra = ("--max-failure-fraction", "0.5")
    for _ in range(2):  # the run, then a resume of it: both end the same way
        done, run, _ = collect_hostile(tmp_path, prefect_server, hostile, "nan", rows, *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        assert manifest(run)["status"] == "completed"
        ok, failed = run_rows(run, "rollouts"), run_rows(run, "failures")
        assert len(ok) == 7 and all(r["reward"] == 1.0 for r in ok)
        assert sorted(r["expected_answer"] for r in failed) == ["1e400", "Infinity", "NaN"]
        assert {r["error"]["type"] for r in failed} == {"VerifierError"}


@pytest.mark.parametrize("attack", ["huge", "gzip"])
def test_oversized_verify_replies_fail_within_the_cap(
    tmp_path: Path, prefect_server: str, hostile: Any, attack: str
) -> None:
    hostile.state.verify, hostile.state.huge_bytes = attack, 64 * 1024 * 1024
    rows = hostile_rows(["2"] * 4)
    extra = ("--max-response-bytes", "1048576", "--max-failure-fraction", "1.0", "--parallel", "4")
    done, run, _, peak_mb = collect_hostile_measured(tmp_path, prefect_server, hostile, f"big-{attack}", rows, *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    failed = run_rows(run, "failures")
    assert len(failed) == 4 and {r["error"]["type"] for r in failed} == {"ResponseTooLarge"}
    assert all(len(json.dumps(r)) < 20_000 for r in failed)  # no part of the 64 MB reached the rows
    # The command's peak stays near its baseline (~190 MB): 4 bodies in flight held whole would add 256 MB.
    assert 100 < peak_mb <= 400, peak_mb


def test_replies_being_read_share_one_memory_budget_across_the_collector(
    tmp_path: Path, prefect_server: str, hostile: Any
) -> None:
    # 16 verifications at once, each reading a 64 MB reply of unknown length up to the 16 MB cap. Measured peak of the
    # command: 211 MB with a 16 MB budget, 382 MB with a 1 GB one (the replies read side by side, 16 x 16 MB).
    hostile.state.verify, hostile.state.huge_bytes = "chunked", 64 << 20
    mb = 1 << 20
    extra = ("--max-response-bytes", str(16 * mb), "--max-reply-memory-bytes", str(16 * mb))
    extra += ("--parallel", "16", "--max-failure-fraction", "1.0")
    rows = hostile_rows(["2"] * 16)
    done, run, _, peak_mb = collect_hostile_measured(tmp_path, prefect_server, hostile, "budget", rows, *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    failed = run_rows(run, "failures")
    assert len(failed) == 16 and {r["error"]["type"] for r in failed} == {"ResponseTooLarge"}
    assert 100 < peak_mb <= 300, peak_mb  # the baseline (~190 MB) plus at most the budget and one reply's cap


@pytest.mark.parametrize("attack", ["hang", "trickle"])
def test_a_stalled_verify_honours_request_and_rollout_timeouts(
    tmp_path: Path, prefect_server: str, hostile: Any, attack: str
) -> None:
    hostile.state.verify = attack
    extra = ("--request-timeout", "2", "--rollout-timeout", "5", "--max-failure-fraction", "1.0")
    done, run, took = collect_hostile(
        tmp_path, prefect_server, hostile, f"stall-{attack}", hostile_rows(["2"] * 2), *extra
    )
    assert done.returncode == 0, done.stderr[-2000:]
    failed = run_rows(run, "failures")
    assert len(failed) == 2 and {r["error"]["type"] for r in failed} == {"VerifierError"}
    # Per request 2 s (was 60 s per read x 3 tries), and the whole verification within the rollout's 5 s.
    assert max(r["timings"]["verify_ms"] for r in failed) < 8_000
    assert took < 90, took


def test_tool_calls_past_the_per_turn_cap_get_an_error_output(
    tmp_path: Path, prefect_server: str, hostile: Any
) -> None:
    hostile.state.tool_calls, hostile.state.tool_bytes = 500, 2 << 20  # each tool reply over the 1 MiB cap too
    extra = ("--max-tool-calls-per-turn", "8", "--max-turns", "2", "--max-response-bytes", str(1 << 20))
    done, run, _ = collect_hostile(
        tmp_path, prefect_server, hostile, "tools", hostile_rows(["2"] * 3, tools=True), *extra
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = run_rows(run, "rollouts")
    assert len(rows) == 3
    for row in rows:
        outputs = [i["output"] for i in row["response"]["output"] if i["type"] == "function_call_output"]
        refused = [o for o in outputs if "more than 8 tool calls" in o]
        too_large = [o for o in outputs if "tool reply too large" in o]  # an error output, the rollout goes on
        assert len(outputs) == 500 and len(refused) == 492 and len(too_large) == 8
        assert all(len(o) < 1000 for o in too_large)
    assert hostile.state.calls["calculate"] == 3 * 8


def test_error_snippets_never_hold_the_key_or_a_storage_secret(
    tmp_path: Path, prefect_server: str, hostile: Any
) -> None:
    hostile.state.echo_headers = True
    key = "sk-canary-7f3a9c1e5b"
    src = write_jsonl(tmp_path / "echo.jsonl", hostile_rows(["2"] * 3))
    command = collect_command(
        src,
        hostile.model_url,
        tmp_path / "runs",
        "echo",
        "--api-key-env",
        "CANARY_KEY",
        "--max-retries",
        "0",
        "--num-repeats",
        "1",
    )
    done = run_command(command, environment(prefect_server, CANARY_KEY=key))
    assert done.returncode == 1, done.stderr[-2000:]
    assert key not in done.stdout + done.stderr
    run = tmp_path / "runs" / "echo"
    stored = "".join(p.read_text() for p in run.rglob("*") if p.is_file())
    assert "HTTP 500" in stored and key not in stored and "***" in stored


def test_error_snippets_never_hold_a_model_block_s_key_or_headers(
    tmp_path: Path, prefect_server: str, hostile: Any
) -> None:
    from prefect.settings import temporary_settings

    from blocks import ModelEndpoint

    hostile.state.echo_headers = True
    key, header = "sk-canary-block-41d9e2", "hdr-canary-block-8c5f"
    with temporary_settings(updates={"api.url": prefect_server}):
        ModelEndpoint(
            base_url=hostile.model_url, model="sim-model", api_key=key, extra_headers={"X-Team": header}
        ).save("echo-model", overwrite=True)
    src = write_jsonl(tmp_path / "echo.jsonl", hostile_rows(["2"] * 3))
    command = collect_command(src, hostile.model_url, tmp_path / "runs", "echo-block", "--model-block", "echo-model")
    command += ["--max-retries", "0", "--num-repeats", "1"]
    done = run_command(command, environment(prefect_server))
    assert done.returncode == 1, done.stderr[-2000:]
    stored = "".join(p.read_text() for p in (tmp_path / "runs" / "echo-block").rglob("*") if p.is_file())
    assert "HTTP 500" in stored and "***" in stored
    for secret in (key, header):
        assert secret not in stored and secret not in done.stdout + done.stderr


def test_badly_typed_tools_and_instructions_are_rejects_with_their_line(
    tmp_path: Path, prefect_server: str, sim: Any
) -> None:
    bad_params: list[dict[str, Any]] = [
        {"tools": [1]},
        {"tools": [{"type": "function", "parameters": {}}]},
        {"tools": [{"type": "function", "name": 7}]},
        {"tools": [{"type": "function", "name": "f", "parameters": "{}"}]},
        {"instructions": 12},
    ]
    rows = math_rows(10) + [
        {"responses_create_params": {"input": "What is 1 + 1?", **params}, "expected_answer": "2"}
        for params in bad_params
    ]
    src = write_jsonl(tmp_path / "typed.jsonl", rows)
    command = collect_command(src, sim.url, tmp_path / "runs", "typed", "--num-repeats", "1")
    done = run_command(command, environment(prefect_server))
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "typed"
    rejects = [json.loads(line) for line in (run / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [11, 12, 13, 14, 15]
    assert len(run_rows(run, "rollouts")) == 10 and not run_rows(run, "failures")


# ---- hostile rollout rows for `rollouts process` and `rollouts tokens` ----------------------------------------

GYM_ROWS = ROOT / "tests" / "fixtures" / "process" / "gym.jsonl"
GOOD_WITH_TOKENS = '"generation_token_ids":[7,8]'


def hostile_rollout_rows(tmp_path: Path) -> Path:
    """The fixture's nine rows with five hostile copies of its first (token-carrying) row at lines 3-7."""
    rows = GYM_ROWS.read_text().splitlines()
    first = rows[0]
    assert GOOD_WITH_TOKENS in first
    hostile = [
        first.replace('"reward":1.0', '"reward":NaN'),  # line 3
        first.replace(GOOD_WITH_TOKENS, f'"generation_token_ids":[7,{2**40}]'),  # line 4
        first.replace('"generation_log_probs":[-0.5,-0.25]', '"generation_log_probs":[-0.5,1e308]'),  # line 5
        first.replace('"reward":1.0', '"reward":1e999'),  # line 6
        first.replace('"_ng_rollout_index":0', f'"_ng_rollout_index":{2**70}'),  # line 7
    ]
    path = tmp_path / "hostile-rollouts.jsonl"
    path.write_text("\n".join(rows[:2] + hostile + rows[2:]) + "\n")
    return path


def rollouts_command(*argv: str) -> subprocess.CompletedProcess[str]:
    return run_command([sys.executable, "-m", "commands", *argv], {**os.environ, "PYTHONPATH": str(ROOT)})


def test_non_finite_and_out_of_range_values_in_rollout_rows_are_bad_rows_with_their_line(tmp_path: Path) -> None:
    src = hostile_rollout_rows(tmp_path)
    strict = rollouts_command("process", str(src), "--objective", "rl", "--out", str(tmp_path / "strict"))
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert f"{src}:3: invalid JSON: NaN and Infinity are not valid JSON" in strict.stderr  # not "lines 1-14"

    done = rollouts_command("process", str(src), "--objective", "rl", "--out", str(tmp_path / "p"), "--skip-bad-rows")
    assert done.returncode == 0, done.stderr
    card = json.loads((tmp_path / "p" / "rl" / "data_card.json").read_text())
    lines = [int(e.split(":")[1]) for e in card["bad_rows"]["examples"]]
    assert card["bad_rows"]["count"] == 5 and lines == [3, 4, 5, 6, 7], card["bad_rows"]
    assert "token id out of range" in card["bad_rows"]["examples"][1]
    assert "log-probability not finite" in card["bad_rows"]["examples"][2]
    import polars as pl

    frame = pl.read_parquet(tmp_path / "p" / "rl" / "rollouts.parquet")
    assert frame.height == 9  # the fixture's rows, none of the hostile ones (no null id, no inf log-probability)

    tokens = rollouts_command("tokens", str(src), "--out", str(tmp_path / "t"), "--skip-bad-rows")
    assert tokens.returncode == 0 and "Traceback" not in tokens.stderr, tokens.stderr
    assert "5 bad rows skipped" in tokens.stdout
    written = pl.read_parquet(tmp_path / "t" / "tokens.parquet")
    assert written.height == 1  # the one good row with token ids


def test_files_left_by_a_kill_in_the_last_stages_are_cleared_by_the_next_run(
    tmp_path: Path, prefect_server: str, sim: Any
) -> None:
    """A kill while the profile or a training file was being written leaves `<file>.tmp-*` beside it (the file itself
    is renamed into place whole, or not at all); the next run of the same command removes them and lists only whole
    files in its manifest."""
    from rollouts.storage import Store, check_inventory

    src = write_jsonl(tmp_path / "p.jsonl", math_rows(8))
    command = collect_command(src, sim.url, tmp_path / "runs", "leftovers", "--num-repeats", "2")
    env = environment(prefect_server)
    first = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "runs" / "leftovers"
    parquet = run / "train" / "rl" / "rollouts.parquet"
    whole = parquet.read_bytes()
    torn = [run / "profile" / "profile.json.tmp-0badf00d", parquet.with_name("rollouts.parquet.tmp-0badf00d")]
    for path in torn:
        path.write_bytes(b"PAR1 torn")  # what a writer killed before its rename leaves
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-2000:]
    written = manifest(run)
    assert written["status"] == "completed" and not any(p.exists() for p in torn)
    assert not list(run.rglob("*.tmp-*")) and parquet.read_bytes() == whole
    assert check_inventory(Store(str(run)), written["files"]) == []


def test_tune_counts_replies_over_the_cap_as_errors(tmp_path: Path, hostile: Any, capsys: Any) -> None:
    """A server whose every reply is over --max-response-bytes answers 200 but serves no rollout: 100 % errors,
    not 0 % (each ResponseTooLarge was once counted as a success)."""
    from commands.tune import main as tune_main

    hostile.state.chat_bytes = 17 << 20  # over the 16 MiB default cap
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    argv = [str(src), "--model-url", hostile.model_url, "--model", "sim-model", "--start", "1", "--max-parallel", "2"]
    code = tune_main([*argv, "--step-requests", "2", "--step-seconds", "0.3", "--out", str(tmp_path / "tune")])
    err = capsys.readouterr().err
    assert code == 1 and "error: no request succeeded (errors: {'too large': " in err, err
    assert "Traceback" not in err and not (tmp_path / "tune").exists()


# Runs `rollouts collect` (argv[1:]) with a real SIGINT sent to itself as the filter stage starts: a deterministic
# moment for a Ctrl-C that a test cannot hit from outside.
_SIGINT_IN_FILTER = """
import os, signal, sys
import flows.collection as collection
real = collection.filter_rollouts
def filter_rollouts(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)
collection.filter_rollouts = filter_rollouts
sys.argv = ["rollouts", *sys.argv[1:]]
from commands import main
sys.exit(main())
"""


def test_a_ctrl_c_in_the_filter_stage_leaves_the_run_interrupted_and_the_next_run_completes_it(
    tmp_path: Path, prefect_server: str, sim: Any
) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(6))
    command = collect_command(src, sim.url, tmp_path / "runs", "filtered", "--num-repeats", "2")
    env = environment(prefect_server)
    stopped = run_command([sys.executable, "-c", _SIGINT_IN_FILTER, *command[3:]], env)
    run = tmp_path / "runs" / "filtered"
    written = manifest(run)
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert written["status"] == "interrupted" and written["counts"]["rollouts_ok"] == 12, written  # not `completed`
    assert not written["outputs"]
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert manifest(run)["status"] == "completed" and (run / "train" / "rl" / "rollouts.parquet").exists()

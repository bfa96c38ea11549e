"""`rollouts tune` and `--parallel auto` against a real server: llama-server with 4 slots (`--parallel 4`) and
`--metrics`. On CPU its slots share the cores, so throughput is about flat from 1 in flight and the client alone
cannot see where the slots end; the server's queue (`llamacpp:requests_deferred`) can, and both find 4.

Kept small: one-prompt-line inputs and a few output tokens a call; `rollouts tune` gets 16 a call and 2 s steps, so
that at 8 in flight the slots stay busy long enough for the queue to be read (with 4 tokens a call, the requests in
transit between the client and the slots left the queue empty at half the samples)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import rollouts
from tests.integration.conftest import math_rows, run_rows, write_jsonl
from tests.realmodel.conftest import MODEL, SLOTS


def test_tune_recommends_the_slot_count(tmp_path: Path, llama_server: str) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(8))
    result = rollouts(
        "tune", str(src), "--model-url", llama_server, "--model", MODEL, "--start", "1", "--max-parallel", "16",
        "--step-seconds", "2", "--max-output-tokens", "16", "--temperature", "0", "--out", str(tmp_path / "tune"),
    )  # fmt: skip
    assert result.code == 0, result.err[-2000:]
    report = json.loads((tmp_path / "tune" / "tune.json").read_text())
    waiting = {step["parallel"]: step["waiting"] for step in report["steps"]}
    assert report["recommended_parallel"] == SLOTS, (report["reason"], waiting)
    assert list(waiting) == [1, 2, 4, 8]  # it stopped at the first step past the knee
    assert waiting[8] > 0 and waiting[1] == waiting[2] == waiting[4] == 0
    assert f"use --parallel {SLOTS} (requests wait at the server at 8" in result.out


def test_parallel_auto_settles_at_the_slot_count(tmp_path: Path, llama_server: str, prefect_server: str) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(12))
    result = rollouts(
        "collect", str(src), "--model-url", llama_server, "--model", MODEL, "--num-repeats", "8",
        "--max-output-tokens", "4", "--parallel", "auto", "--min-parallel", "1", "--initial-parallel", "1",
        "--max-parallel", "16",
        "--task-runner", "threads", "--out", str(tmp_path / "runs"), "--run-name", "auto", "--no-progress",
        api_url=prefect_server,
    )  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    run = tmp_path / "runs" / "auto"
    assert {row["status"] for row in run_rows(run, "rollouts")} == {"ok"}
    [trace_file] = (run / "profile" / "parallel").glob("*.jsonl")
    trace = [json.loads(line) for line in trace_file.read_text().splitlines()]
    doubled = [row["limit"] for row in trace if row["reason"] == "double"]
    knees = [row for row in trace if row["reason"].startswith("knee")]
    assert doubled == [2, 4, 8], trace
    assert [(row["limit"], row["reason"].split(" (")[0]) for row in knees] == [(SLOTS, "knee: server queue")], trace

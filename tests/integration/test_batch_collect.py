"""`rollouts collect --batch` as a user runs it: the command in a subprocess, the real Prefect server, and the
simulated server's Files and Batch APIs. Batch and live runs give the same rollouts; a kill -9 while batches are in
flight, then the same command again, creates no second batch; what a batch misses is sent again, or live."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollouts.config import (
    CollectConfig,
    ConcurrencyConfig,
    EndpointConfig,
    RowsConfig,
    SamplingConfig,
    StorageConfig,
)
from rollouts.sim.launch import SimServer, start_sim_server
from rollouts.stages.inline import collect_plan
from rollouts.stages.shard import plan_run
from tests.cli.conftest import rollouts
from tests.integration.conftest import math_rows, read_jsonl, run_rows, write_jsonl
from tests.servers.vllm_batch import BatchRequestInput

ROOT = Path(__file__).resolve().parents[2]
CALCULATOR = ROOT / "rollouts" / "data" / "calculator_prompts.jsonl"
KEY = "sk-batch-test-key-0123456789"


def command(src: Path, out: Path, sim: SimServer, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "commands",
        "collect",
        str(src),
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        str(out),
        "--run-name",
        name,
        "--seed",
        "3",
        "--temperature",
        "0.5",
        "--no-progress",
        *extra,
    ]


def env_for(api_url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": api_url, "SIM_KEY": KEY}


def run(argv: list[str], api_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env_for(api_url), cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )


def states(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every turn's batch state of a run, by `<shard>/turn-<k>`."""
    return {
        f"{path.parent.name}/{path.stem}": json.loads(path.read_text())
        for path in sorted((run_dir / "batches").glob("*/turn-*.json"))
    }


def manifest_batches(run_dir: Path) -> list[dict[str, Any]]:
    """The batches the run's manifest lists (empty while it has none, or no manifest yet)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [b for b in manifest.get("batches") or [] if b.get("batch_id")]


def provider_batches(sim: SimServer, run_dir: Path) -> list[dict[str, Any]]:
    """The batches the simulated provider holds for this run (by the run id in their metadata)."""
    run_id = json.loads((run_dir / "manifest.json").read_text())["run_id"]
    listed = httpx.get(f"{sim.url}/batches", params={"limit": 100}, timeout=10).json()["data"]
    return [batch for batch in listed if (batch.get("metadata") or {}).get("rollouts_run") == run_id]


def rewards(run_dir: Path) -> dict[tuple[int, int], float]:
    return {(r["_ng_task_index"], r["_ng_rollout_index"]): r["reward"] for r in run_rows(run_dir, "rollouts")}


def test_batch_run_on_processes_gives_the_live_rollouts_multi_turn_with_report_and_vllm_lines(
    tmp_path, sim, prefect_server
):
    out = tmp_path / "runs"
    shared = ["--limit", "4", "--num-repeats", "2", "--shard-size", "2", "--api-key-env", "SIM_KEY"]
    prices = ["--price-input", "1", "--price-output", "4"]
    # On collector processes: the batch rounds run in the workers, their counts reach the flow over the progress
    # channel, and the flow copies the batches' ids into the manifest (the other tests here run on threads).
    engine = ["--task-runner", "processes", "--workers", "2"]
    batch = run(
        command(CALCULATOR, out, sim, "batch", *shared, *prices, *engine, "--batch", "--batch-poll-interval", "0.1"),
        prefect_server,
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    run_dir = out / "batch"
    # The live reference, the same options collected in this process (the live path has its own command tests).
    config = CollectConfig(
        input=str(CALCULATOR),
        endpoint=EndpointConfig(model_url=sim.url, model="sim-model"),
        sampling=SamplingConfig(num_repeats=2, seed=3, temperature=0.5),
        rows=RowsConfig(limit=4),
        concurrency=ConcurrencyConfig(shard_size=2),
        storage=StorageConfig(out=str(out)),
        run_name="live",
    )
    asyncio.run(collect_plan(plan_run(config)))
    # The same rollouts, rewards and row shape: batch lines are answered as live calls, the seed per rollout.
    assert rewards(run_dir) == rewards(out / "live") and len(rewards(run_dir)) == 8
    live_row, batch_row = run_rows(out / "live", "rollouts")[0], run_rows(run_dir, "rollouts")[0]
    assert set(batch_row) == set(live_row) and batch_row["response"]["usage"]["output_tokens"] > 0
    # Tool rollouts advance one turn per batch round: every shard has a second turn, each turn one batch.
    found = states(run_dir)
    assert {key.split("/")[1] for key in found} >= {"turn-0", "turn-1"}
    jobs = [job for state in found.values() for job in state["jobs"]]
    assert all(job["status"] == "completed" and job["collected"] for job in jobs)
    assert sorted(b["id"] for b in provider_batches(sim, run_dir)) == sorted(job["batch_id"] for job in jobs)
    assert sorted((b["batch_id"], b["output_file_id"]) for b in manifest_batches(run_dir)) == sorted(
        (job["batch_id"], job["output_file_id"]) for job in jobs
    )
    # The input files the provider got are the lines vLLM's run-batch reads; custom_id is the rollout id.
    ids = {row["rollout_id"] for row in run_rows(run_dir, "rollouts")}
    for job in jobs:
        content = httpx.get(f"{sim.url}/files/{job['input_file_id']}/content", timeout=10).content
        lines = [BatchRequestInput.model_validate_json(line) for line in content.splitlines()]
        assert [line.custom_id for line in lines] == job["custom_ids"] and set(job["custom_ids"]) <= ids
    # The report: cost at the batch price, and the batch timeline.
    profile = json.loads((run_dir / "profile" / "profile.json").read_text())
    assert profile["cost"]["batch_discount"] == 0.5
    assert profile["cost"]["total"] == pytest.approx(profile["cost"]["list_total"] * 0.5, abs=1e-6)
    assert {row["batch_id"] for row in profile["batches"]} == {job["batch_id"] for job in jobs}
    report = (run_dir / "profile" / "report.md").read_text()
    assert "## Batches" in report and "batch price, 0.5 of list" in report
    # The UI's second progress artifact: the batches' requests answered, at 100 when the run ends.
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["batch"]}}}).json()
    (flow_run,) = [r for r in runs if r["parameters"]["config"]["storage"]["out"] == str(out)]
    artifacts = httpx.post(
        f"{prefect_server}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}
    ).json()
    (answered,) = [a for a in artifacts if (a.get("description") or "").startswith("Batch requests answered")]
    assert answered["type"] == "progress" and answered["data"] == 100.0
    # The key is sent (the header) but never stored.
    assert not [p for p in run_dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


def test_kill_9_while_batches_are_in_flight_then_rerun_creates_no_second_batch(tmp_path, prefect_server):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(6))
    out = tmp_path / "runs"
    run_dir = out / "kill"
    with start_sim_server(latency_ms=5, seed=0, batch_delay_s=4.0) as sim:
        argv = command(src, out, sim, "kill", "--num-repeats", "2", "--shard-size", "3", "--batch")
        # One shard task at a time for live calls; with --batch every shard's batches still go out at once.
        argv += ["--batch-poll-interval", "0.2", "--max-concurrent-shards", "1"]
        process = subprocess.Popen(
            argv, env=env_for(prefect_server), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None:
                jobs = [job for state in states(run_dir).values() for job in state["jobs"]]
                if len(jobs) == 2 and all(job["batch_id"] for job in jobs) and len(manifest_batches(run_dir)) == 2:
                    break
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        before = states(run_dir)
        assert len(before) == 2, "both shards' batches were created before the kill"
        assert all(job["status"] in ("validating", "in_progress") for s in before.values() for job in s["jobs"])
        # the manifest had every batch's ids while they were in flight (the flow copies them as batches are created)
        in_flight = manifest_batches(run_dir)
        assert {(b["batch_id"], b["input_file_id"]) for b in in_flight} == {
            (job["batch_id"], job["input_file_id"]) for state in before.values() for job in state["jobs"]
        }
        assert not run_rows(run_dir, "rollouts"), "killed while the batches were in flight"
        again = run(argv, prefect_server)
        assert again.returncode == 0, again.stderr[-3000:]
        held = provider_batches(sim, run_dir)
    after = states(run_dir)
    created = sorted(job["batch_id"] for state in before.values() for job in state["jobs"])
    assert sorted(job["batch_id"] for state in after.values() for job in state["jobs"]) == created
    assert sorted(batch["id"] for batch in held) == created  # the provider got no second batch
    assert sorted(b["batch_id"] for b in manifest_batches(run_dir)) == created
    assert {b["status"] for b in manifest_batches(run_dir)} == {"completed"}
    rows = run_rows(run_dir, "rollouts")
    assert len(rows) == 12 and len({r["rollout_id"] for r in rows}) == 12


@pytest.fixture(scope="module")
def flaky() -> Iterator[SimServer]:
    """A provider whose first batch expires half done, and whose batch requests fail with 500 three times in ten."""
    with start_sim_server(latency_ms=5, seed=0, batch_delay_s=0.3, batch_fail_rate=0.3, batch_expire=1) as server:
        yield server


def test_what_a_batch_misses_goes_into_a_new_batch(tmp_path, flaky, prefect_server):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(8))
    out = tmp_path / "runs"
    argv = command(src, out, flaky, "again", "--num-repeats", "2", "--shard-size", "8", "--batch")
    result = run([*argv, "--batch-poll-interval", "0.1", "--max-failure-fraction", "1"], prefect_server)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = states(out / "again")["00000/turn-0"]["jobs"]
    assert jobs[0]["status"] == "expired" and jobs[0]["request_counts"]["completed"] < 16
    assert [job["round"] for job in jobs][:2] == [0, 1] and len(jobs) >= 2
    sent_again = {custom_id for job in jobs[1:] for custom_id in job["custom_ids"]}
    rows, failures = run_rows(out / "again", "rollouts"), run_rows(out / "again", "failures")
    assert len(rows) + len(failures) == 16 and len(rows) >= 14
    assert sent_again & {row["rollout_id"] for row in rows}, "requests sent again were answered"
    assert all(row["attempts"] >= 1 for row in rows)
    assert sorted(b["id"] for b in provider_batches(flaky, out / "again")) == sorted(j["batch_id"] for j in jobs)
    for failure in failures:  # a request that failed in every round is a typed failure, as a live one
        assert failure["error"]["type"] == "ProviderError" and failure["error"]["stage"] == "generate"


def test_batch_fallback_live_sends_what_a_batch_misses_as_live_calls(tmp_path, flaky, prefect_server):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(8))
    out = tmp_path / "runs"
    live_before = flaky.stats()["by_endpoint"].get("chat", 0)
    argv = command(src, out, flaky, "fallback", "--num-repeats", "2", "--shard-size", "8", "--batch")
    prices = ["--price-input", "1", "--price-output", "4"]
    result = run([*argv, *prices, "--batch-poll-interval", "0.1", "--batch-fallback", "live"], prefect_server)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = states(out / "fallback")["00000/turn-0"]["jobs"]
    assert len(jobs) == 1 and jobs[0]["round"] == 0  # nothing went into a second batch
    results = read_jsonl(out / "fallback" / "batches" / "00000" / "turn-0.results.jsonl")
    missed = {line["custom_id"] for line in results if "failure" in line}
    assert missed, "the flaky provider failed some batch requests"
    assert flaky.stats()["by_endpoint"].get("chat", 0) - live_before == len(missed)
    rows = run_rows(out / "fallback", "rollouts")
    assert len(rows) == 16 and not run_rows(out / "fallback", "failures")
    # The report charges the live calls at the list price, the rest at the batch price.
    cost = json.loads((out / "fallback" / "profile" / "profile.json").read_text())["cost"]
    live = read_jsonl(out / "fallback" / "batches" / "00000" / "live.jsonl")
    assert {line["custom_id"] for line in live} == missed
    assert cost["live_fallback_tokens"] == {
        "input": sum(line["input"] for line in live),
        "output": sum(line["output"] for line in live),
    }
    extra = (cost["live_fallback_tokens"]["input"] * 1 + cost["live_fallback_tokens"]["output"] * 4) / 1e6 * 0.5
    assert cost["total"] == pytest.approx(cost["list_total"] * 0.5 + extra, abs=1e-5)


def test_a_server_without_the_batch_api_is_refused_before_the_run(tmp_path):
    """A server that serves completions but not /v1/files and /v1/batches (vLLM or SGLang without a batch front):
    one line, exit 2, before Prefect starts, nothing uploaded and no run folder."""
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    with start_sim_server(latency_ms=0, batch_api=False) as bare:
        argv = command(src, tmp_path / "runs", bare, "bare", "--batch")[3:]  # the arguments after `-m commands`
        result = rollouts(*argv)
        assert bare.stats()["requests"] == 0  # not one model request
    assert (result.code, result.fast) == (2, True), result.err[-2000:]
    assert result.error_lines == [
        f"error: --batch: {bare.url} has no Batch API (GET {bare.url}/files answered 404): batch mode needs /files "
        "and /batches (OpenAI, Azure OpenAI, a LiteLLM proxy); drop --batch to send live calls"
    ]
    assert not (tmp_path / "runs").exists()

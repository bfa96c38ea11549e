"""The collect-rollouts flow end to end: real Prefect runs against the simulated model server over loopback."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from prefect.artifacts import Artifact

from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from rollouts.errors import ConfigError, RunFailedError
from rollouts.records import SCHEMA_VERSION, validate_rollout
from rollouts.sim.launch import start_sim_server
from tests.integration.conftest import math_rows, read_jsonl, run_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("prefect_server", "board")


def config(tmp_path: Path, input_path: Path, url: str, **overrides) -> CollectConfig:
    fields = dict(
        input=str(input_path),
        out=str(tmp_path / "runs"),
        model_url=url,
        model="sim-model",
        num_repeats=4,
        parallel=16,
        shard_size=4,
        temperature=0.0,
        seed=7,
        run_name="t",
    )
    fields.update(overrides)
    return CollectConfig(**fields)


def test_collects_verified_rollouts_rejects_bad_rows_and_writes_training_files(tmp_path, sim):
    rows: list = math_rows(10)
    rows.insert(3, "{not json")
    rows.insert(6, {"responses_create_params": {"tools": []}})
    rows.insert(8, {"prompt": "What is 2 + 2?", "expected_answer": "4", "agent_ref": {"name": "nowhere"}})
    rows.append({"prompt": "What is 40 + 2?", "expected_answer": "42"})
    rows.append({"messages": [{"role": "user", "content": "Compute 6 * 7."}], "expected_answer": "42"})
    src = write_jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = config(tmp_path, src, sim.url, objective="rl,sft,dpo")

    summary = collect_rollouts(cfg)

    run = Path(summary.run_url)
    assert summary.status == "completed"
    rollouts = run_rows(run, "rollouts")
    assert len(rollouts) == 12 * 4 == summary.rollouts_ok
    assert len({r["rollout_id"] for r in rollouts}) == len(rollouts)
    assert Counter(r["_ng_task_index"] for r in rollouts) == {i: 4 for i in {r["_ng_task_index"] for r in rollouts}}
    assert {r["_ng_rollout_index"] for r in rollouts} == {0, 1, 2, 3}
    # temperature 0: the simulated model is right nearly always, and the math verifier must see it
    assert sum(r["reward"] for r in rollouts) / len(rollouts) > 0.8
    for r in rollouts:
        assert validate_rollout(r) and r["status"] == "ok" and r["schema_version"] == SCHEMA_VERSION
        assert r["agent_ref"] == {"name": "math"}
        assert r["response"]["object"] == "response" and r["response"]["usage"]["output_tokens"] > 0
        assert r["finish_reason"] == "stop"
        assert r["responses_create_params"]["temperature"] == 0.0
        assert r["sampling"]["seed"] == 7 + r["_ng_rollout_index"] and "seed" not in r["responses_create_params"]
        assert r["response"]["usage"]["input_tokens_details"] == {"cached_tokens": 0}
        assert set(r["timings"]) >= {"queue_ms", "model_ms", "verify_ms", "total_ms"}
        assert r["reward"] == (1.0 if r["extracted_answer"] == r["expected_answer"] else 0.0)
    rejects = read_jsonl(run / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [4, 7, 9]
    assert "invalid JSON" in rejects[0]["error"] and rejects[0]["raw"] == "{not json"
    assert "input" in rejects[1]["error"]
    assert "unknown environment 'nowhere'" in rejects[2]["error"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["counts"]["rollouts_ok"] == 48
    profile = json.loads((run / "profile" / "profile.json").read_text())
    assert profile["rollouts"] == 48 and profile["rewards"]["math"]["count"] == 48
    assert profile["timings_ms"]["total_ms"]["p50"] > 0
    assert set(summary.outputs) == {"rl", "sft", "dpo"} and all(summary.outputs.values())
    sft = read_jsonl(run / "train" / "sft" / "openai.jsonl")
    assert len(sft) == len({r["_ng_task_index"] for r in rollouts if r["reward"] == 1.0})  # best-of-n, reward >= 1
    assert all(m["role"] in {"system", "user", "assistant"} for r in sft for m in r["messages"])
    histogram = Artifact.get("reward-histogram")
    assert histogram is not None and "math: 48 rollouts" in histogram.data
    card = Artifact.get("data-card-sft")
    assert card is not None and "Data card: sft" in card.data


def test_retries_injected_faults_then_records_what_still_fails(tmp_path):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(8))
    with start_sim_server(latency_ms=2, seed=1, fail_rate=0.3, rate_limit_rate=0.2, retry_after_s=0) as server:
        summary = collect_rollouts(config(tmp_path, src, server.url, max_retries=6, run_name="retry"))
        stats = server.stats()
    run = Path(summary.run_url)
    rollouts = run_rows(run, "rollouts")
    assert summary.status == "completed" and len(rollouts) == 32
    assert stats["by_status"].get("500", 0) > 0 and stats["by_status"].get("429", 0) > 0
    assert max(r["attempts"] for r in rollouts) > 1

    with start_sim_server(latency_ms=2, seed=2, fail_rate=0.5) as server:
        state = collect_rollouts(config(tmp_path, src, server.url, max_retries=0, run_name="fail"), return_state=True)
    assert state.is_failed()
    with pytest.raises(RunFailedError, match="above --max-failure-fraction"):
        state.result()
    run = tmp_path / "runs" / "fail"
    failures, ok = run_rows(run, "failures"), run_rows(run, "rollouts")
    assert failures and len(failures) + len(ok) == 32
    for f in failures:
        assert f["status"] == "failed" and f["reward"] is None
        assert (
            f["error"]["type"] == "ProviderError"
            and f["error"]["status_code"] == 500
            and f["error"]["stage"] == "generate"
        )
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"

    # The same command again resumes: finished rollouts are kept as they are, failed ones retried, none duplicated.
    before = {r["rollout_id"]: r for r in ok}
    with start_sim_server(latency_ms=2, seed=3) as server:
        summary = collect_rollouts(config(tmp_path, src, server.url, max_retries=0, run_name="fail"))
    assert summary.status == "completed"
    after = run_rows(run, "rollouts")
    assert len(after) == 32 and len({r["rollout_id"] for r in after}) == 32
    assert all(before[r["rollout_id"]] == r for r in after if r["rollout_id"] in before)
    assert run_rows(run, "failures") == []
    retried = [r for r in after if r["rollout_id"] not in before]
    assert retried and all(r["attempts"] == 2 for r in retried)


def test_timeouts_become_typed_failures(tmp_path):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(4))
    with start_sim_server(latency_ms=2, seed=4, slow_rate=0.5, slow_ms=5000) as server:
        state = collect_rollouts(
            config(
                tmp_path, src, server.url, max_retries=0, request_timeout=0.5, max_failure_fraction=1.0, run_name="slow"
            ),
            return_state=True,
        )
    summary = state.result()
    failures = run_rows(Path(summary.run_url), "failures")
    assert failures and summary.rollouts_failed == len(failures)
    assert all(
        f["error"]["type"] == "ProviderTimeout"
        and "0.5 s request deadline" in f["error"]["message"]
        and f["error"]["retryable"]
        and f["error"]["status_code"] is None
        for f in failures
    )


def test_same_run_name_with_another_config_is_refused(tmp_path, sim):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    collect_rollouts(config(tmp_path, src, sim.url, run_name="same"))
    state = collect_rollouts(config(tmp_path, src, sim.url, run_name="same", temperature=0.5), return_state=True)
    with pytest.raises(ConfigError, match="different config or input.*temperature"):
        state.result()
    write_jsonl(src, math_rows(3))
    state = collect_rollouts(config(tmp_path, src, sim.url, run_name="same"), return_state=True)
    with pytest.raises(ConfigError, match="input file content"):
        state.result()


def test_responses_api_with_token_ids(tmp_path, sim):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(3))
    summary = collect_rollouts(config(tmp_path, src, sim.url, api="responses", return_tokens=True, run_name="resp"))
    rollouts = run_rows(Path(summary.run_url), "rollouts")
    assert len(rollouts) == 12
    for r in rollouts:
        last = r["response"]["output"][-1]
        assert last["prompt_token_ids"] and last["generation_token_ids"]
        assert (
            len(last["generation_token_ids"])
            == len(last["generation_log_probs"])
            == r["response"]["usage"]["output_tokens"]
        )


def test_chat_api_with_token_ids_and_length_limit(tmp_path, sim):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    summary = collect_rollouts(config(tmp_path, src, sim.url, return_tokens=True, max_output_tokens=3, run_name="len"))
    rollouts = run_rows(Path(summary.run_url), "rollouts")
    assert rollouts and all(
        r["finish_reason"] == "length" and r["response"]["status"] == "incomplete" for r in rollouts
    )
    assert all(len(r["response"]["output"][-1]["generation_token_ids"]) == 3 for r in rollouts)


def test_empty_input_fails_fast(tmp_path, sim):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    state = collect_rollouts(config(tmp_path, src, sim.url), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="empty"):
        state.result()


def test_dask_task_runner_splits_parallel_between_worker_processes(tmp_path):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(12))
    with start_sim_server(latency_ms=30, seed=6) as server:
        summary = collect_rollouts(
            config(
                tmp_path,
                src,
                server.url,
                task_runner="dask",
                dask_workers=2,
                parallel=8,
                shard_size=3,
                max_concurrent_shards=2,
                run_name="dask",
            )
        )
        stats = server.stats()
    rollouts = run_rows(Path(summary.run_url), "rollouts")
    assert summary.status == "completed" and len(rollouts) == 48 == len({r["rollout_id"] for r in rollouts})
    assert all(r["reward"] in (0.0, 1.0) for r in rollouts)
    assert stats["max_in_flight"] <= 8  # 4 per worker process, never the full budget in each

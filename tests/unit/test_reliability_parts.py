"""The reliability pieces on their own: failure classification and counts, secret refusal and redaction, the stop
signal and its signal handlers, time-bounded appends, typed errors."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import threading

import httpx
import pytest

from rollouts.client.retry import transport_failure
from rollouts.collector.interrupt import StopSignal, install_signal_handlers, run_until_stopped
from rollouts.config import CollectConfig
from rollouts.errors import ConfigError, InternalError, ProviderError, ResponseTooLarge, RolloutsError, error_record
from rollouts.redact import MASK, redact_url, redacted, redacted_dump, refuse_secrets, secret_problems
from rollouts.stages.failures import compacted, failure_counts, is_retryable, regenerates, resume_state
from rollouts.storage import Store

CANARY = "canary-5ecret-7f3a"


def config(**fields) -> CollectConfig:
    return CollectConfig(**{"input": "p.jsonl", "model_url": "http://x/v1", "model": "m", **fields})


# ---- failures --------------------------------------------------------------------------------------------------


def failed(rid: str, stage: str, retryable: bool | None, attempts: int = 1, **error) -> dict:
    record = {"type": "VerifierError", "message": "m", "status_code": None, "stage": stage, **error}
    if retryable is not None:
        record["retryable"] = retryable
    return {"rollout_id": rid, "status": "failed", "attempts": attempts, "error": record}


def test_resume_state_regenerates_only_verify_failures_of_the_latest_generation():
    generations = [
        {"rollout_id": "a", "status": "ok", "attempts": 1},
        {"rollout_id": "b", "status": "ok", "attempts": 1},
        {"rollout_id": "c", "status": "failed", "attempts": 3},
        {"rollout_id": "d", "status": "ok", "attempts": 2},
        {"rollout_id": "e", "status": "ok", "attempts": 1},
    ]
    failures = [
        failed("a", "verify", True),
        failed("b", "verify", False),
        failed("c", "generate", True, 3),
        failed("d", "verify", True, attempts=1),
    ]  # d was regenerated since (attempts 2): verify that one
    done, prior = resume_state(generations, failures)
    assert done == {"b", "d", "e"} and prior == {"a": 1, "c": 3}
    assert regenerates(failures[0]) and not regenerates(failures[1]) and not regenerates(failures[2])


def test_older_error_records_are_classified_by_type_and_status():
    assert is_retryable({"type": "ProviderError", "status_code": 503}) and not is_retryable(
        {"type": "ProviderError", "status_code": 400}
    )
    assert is_retryable({"type": "ProviderError", "status_code": None}) and not is_retryable(
        {"type": "ResponseTooLarge"}
    )
    assert is_retryable({"type": "VerifierError", "status_code": 422}) and is_retryable(None)


def test_failure_counts_tell_retryable_from_permanent_with_counts():
    rows = [failed("a", "generate", True, type="ProviderTimeout")] * 3 + [
        failed("b", "generate", False, type="ProviderError", status_code=400)
    ] * 2
    counts = failure_counts(rows, missing=4)
    assert (counts.retryable_total, counts.permanent_total) == (7, 2)
    text = counts.describe()
    assert "7 may succeed when the same command runs again" in text and "ProviderTimeout ×3" in text
    assert "2 will not without a change" in text and "ProviderError HTTP 400 ×2" in text


def test_compacted_generations_keep_unverified_records_whole_and_stub_verified_ones():
    lines = [
        json.dumps({"rollout_id": "a", "status": "failed", "attempts": 1}) + "\n",
        json.dumps({"rollout_id": "a", "status": "ok", "attempts": 2, "response": {"big": "x"}}) + "\n",
        json.dumps({"rollout_id": "b", "status": "ok", "attempts": 1, "response": {"big": "y"}}) + "\n",
        '{"rollout_id": "torn"',
    ]
    kept = [json.loads(line) for line in compacted(lines, {"a"})]
    assert kept == [
        {"rollout_id": "a", "status": "ok", "attempts": 2, "verified": True},
        {"rollout_id": "b", "status": "ok", "attempts": 1, "response": {"big": "y"}},
    ]


# ---- errors ----------------------------------------------------------------------------------------------------


def test_every_error_record_is_typed_with_retryable_and_attempts():
    record = error_record(KeyError("choices"), "generate")
    assert record == {
        "type": "InternalError",
        "message": "KeyError: 'choices'",
        "status_code": None,
        "stage": "generate",
        "retryable": False,
        "attempts": 1,
    }
    too_big = ResponseTooLarge("big", status_code=200, retryable=False).add(attempts=1)
    assert pickle.loads(pickle.dumps(too_big)).as_record("generate")["retryable"] is False
    assert ProviderError("x", status_code=503, retryable=True, attempts=3).as_record()["attempts"] == 3
    assert isinstance(pickle.loads(pickle.dumps(InternalError("x"))), RolloutsError)


def test_transport_failures_are_named_by_their_cause():
    import aiohttp

    refused = httpx.ConnectTimeout("mapped")
    refused.__cause__ = aiohttp.ClientConnectorError(None, ConnectionRefusedError(111, "refused"))  # type: ignore[arg-type]
    assert transport_failure(refused) == transport_failure(httpx.ConnectError("x")).__class__(
        "connection refused", timeout=False, sent=False
    )
    hung_up = httpx.ConnectTimeout("mapped")
    hung_up.__cause__ = aiohttp.ServerDisconnectedError()
    failure = transport_failure(hung_up)
    assert failure.sent and not failure.timeout and "closed the connection" in failure.label
    assert transport_failure(httpx.ReadTimeout("t")).timeout and not transport_failure(httpx.ConnectError("x")).sent


# ---- secrets ---------------------------------------------------------------------------------------------------


def test_credentials_in_urls_and_storage_options_are_refused_without_echoing_them():
    bad = config(
        model_url=f"http://user:{CANARY}@host:8000/v1",
        remote_env={"gym": f"http://u:{CANARY}@gym:1"},
        storage={"options": {"key": "AKIA", "secret": CANARY, "client_kwargs": {"region_name": "x"}}},
        input=f"https://data/p.jsonl?sig={CANARY}",
    )
    problems = secret_problems(bad)
    assert len(problems) == 4 and not any(CANARY in p for p in problems)
    assert "--api-key-env" in problems[0] and "AWS_SECRET_ACCESS_KEY" in problems[-1]
    with pytest.raises(ConfigError) as info:
        refuse_secrets(bad)
    assert CANARY not in info.value.message and "storage-options holds credentials (key, secret)" in info.value.message
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        refuse_secrets(config(api_key_env=f"sk-{CANARY}"))
    refuse_secrets(
        config(
            storage={
                "options": {
                    "anon": False,
                    "profile": "dev",
                    "token": "anon",
                    "config_kwargs": {"signature_version": "s3v4"},
                }
            }
        )
    )


def test_redacted_masks_every_credential_and_keeps_the_rest():
    risky = config(
        model_url=f"https://u:{CANARY}@host/v1?api-key={CANARY}&api-version=2024",
        storage={"options": {"client_kwargs": {"endpoint_url": "http://minio:9000", "aws_secret_access_key": CANARY}}},
    )
    dumped = json.dumps(redacted_dump(risky))
    assert CANARY not in dumped and "api-version=2024" in dumped and "http://minio:9000" in dumped
    masked = redacted(risky)
    assert masked.endpoint.model_url == f"https://{MASK}@host/v1?api-key={MASK}&api-version=2024"
    assert masked.storage.options["client_kwargs"]["aws_secret_access_key"] == MASK
    assert redact_url("http://host:8/v1") == "http://host:8/v1" and redacted(config()) == config()


# ---- stop signal -----------------------------------------------------------------------------------------------


async def test_a_stop_requested_from_another_thread_wakes_the_loop_and_cancels_work_past_the_grace():
    stop = StopSignal(grace_s=0.05)
    started = asyncio.Event()

    async def forever() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    async def quick() -> str:
        return "done"

    assert await run_until_stopped(quick(), stop) == (False, "done")
    task = asyncio.ensure_future(run_until_stopped(forever(), stop))
    await started.wait()
    threading.Thread(target=stop.request, args=("interrupted (SIGINT)",)).start()
    assert await task == (True, None) and stop.reason == "interrupted (SIGINT)"


def test_sigint_requests_the_stop_and_a_second_signal_exits_with_its_own_code():
    stop = StopSignal()
    said, exits = [], []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # Python's, or what an earlier test left
    restore = install_signal_handlers(stop, announce=said.append, hard_exit=exits.append)
    try:
        assert signal.getsignal(signal.SIGINT) not in before
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set() and "no new rollouts" in said[0] and not exits and stop.exit_code == 130
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [143, 130] and "run the same command again" in said[1]
    finally:
        restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---- appends ---------------------------------------------------------------------------------------------------


async def test_appended_lines_reach_the_file_within_the_flush_interval_without_more_writes(tmp_path):
    store = Store(str(tmp_path))
    appender = store.appender("generations", "00000.jsonl")
    appender.flush_interval_s = 0.02
    appender.write('{"a": 1}')
    path = tmp_path / "generations" / "00000.jsonl"
    assert path.read_text() == ""  # buffered ...
    await asyncio.sleep(0.1)
    assert path.read_text() == '{"a": 1}\n'  # ... and flushed by the timer, with no write or commit after it
    appender.commit()


# ---- the end of a run ------------------------------------------------------------------------------------------


def test_the_final_message_splits_failures_and_an_interrupted_run_says_how_to_resume(tmp_path):
    from rollouts.records import dumps
    from rollouts.run import RunPlan, RunRef, ShardRef, ShardResult
    from rollouts.stages.outcome import finish_run, judge

    run = RunRef(run_id="r", run_url=str(tmp_path / "run"), config=config(num_repeats=2, max_failure_fraction=0.1))
    plan = RunPlan(run=run, shards=[ShardRef(shard="00000", prompts=5)], prompts=5, rejects=0, resumed=False)
    rows = [
        failed("a", "generate", True, type="ProviderTimeout"),
        failed("b", "generate", False, type="ProviderError", status_code=400),
    ]
    Store(run.run_url).write_lines([dumps(r) for r in rows], "failures", "00000.jsonl")
    results = [ShardResult(shard="00000", rollouts=8, failed=2, reward_sum=7.0)]
    summary = finish_run(plan, judge(plan, results, []), results, [], {}, {})
    assert summary.status == "failed" and "2 of 10 rollouts failed" in summary.reason
    assert "1 may succeed when the same command runs again (ProviderTimeout ×1" in summary.reason
    assert "1 will not without a change" in summary.reason and "ProviderError HTTP 400 ×1" in summary.reason
    results = [ShardResult(shard="00000", rollouts=7, failed=2, reward_sum=7.0)]
    verdict = judge(plan, results, [], interrupted="interrupted (SIGINT)")
    stopped = finish_run(plan, verdict, results, [], {}, {})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert stopped.status == manifest["status"] == "interrupted"
    assert manifest["reason"] == (
        "interrupted (SIGINT) with 7 of 10 rollouts verified; run the same command again to resume where it stopped"
    )

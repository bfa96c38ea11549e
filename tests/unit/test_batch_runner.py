"""BatchRunner against the real simulated server on loopback: round trip, splitting, partial failures, expiry and
resubmission, kill and resume without a second batch, cancel, and the key kept out of errors and state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rollouts.batch import CHAT, RESPONSES, BatchAPI, BatchAPIError, BatchJob, BatchLimits, BatchRunner, BatchState
from rollouts.batch.jsonl import request_line
from rollouts.batch.results import JobResults
from rollouts.sim import SimConfig, serve_in_thread

KEY = "sk-test-Zq81secretvalue"
Start = Callable[..., str]


class Killed(Exception):
    """Stands in for the process dying at a chosen point."""


@pytest.fixture
def sim() -> Iterator[Start]:
    stops: list[Callable[[], None]] = []

    def run(**options: Any) -> str:
        url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=5, **{"batch_delay_s": 0.1, **options}))
        stops.append(stop)
        return url

    yield run
    for stop in stops:
        stop()


def chat_requests(count: int, start: int = 0) -> dict[str, dict[str, Any]]:
    return {
        f"rollout-{i}": {
            "model": "sim",
            "seed": i,
            "temperature": 0,
            "messages": [{"role": "user", "content": f"What is {i} * 7?"}],
        }
        for i in range(start, start + count)
    }


def runner(api: BatchAPI, **options: Any) -> BatchRunner:
    return BatchRunner(api, poll_interval_s=0.02, **options)


async def server_batches(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url) as client:
        return list((await client.get("/batches", params={"limit": 100})).json()["data"])


async def test_round_trip_returns_the_live_replies_by_custom_id(sim: Start) -> None:
    url = sim(batch_delay_s=0.3)
    requests = chat_requests(7)
    progress: list[tuple[str, int]] = []
    async with BatchAPI(url, KEY) as api:
        state = BatchState.new(CHAT)
        outcome = await runner(api).run(
            state,
            requests,
            on_progress=lambda job, _: progress.append(
                (job.status, job.request_counts.completed if job.request_counts else 0)
            ),
        )
    assert (outcome.succeeded, outcome.failed, outcome.failures) == (7, 0, {})
    assert set(outcome.replies) == set(requests)
    async with httpx.AsyncClient(base_url=url) as client:
        for custom_id, body in requests.items():
            live = (await client.post("/chat/completions", json=body)).json()
            reply = outcome.replies[custom_id]
            assert reply["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
    (job,) = state.jobs
    assert job.status == "completed" and job.collected and job.batch_id and job.input_file_id
    assert {"created_at", "in_progress_at", "completed_at"} <= job.timeline.keys()
    assert any(status == "in_progress" for status, _ in progress) and progress[-1][1] == 7
    assert state.progress().model_dump() == {"total": 7, "completed": 7, "failed": 0}
    assert len(await server_batches(url)) == 1


async def test_responses_requests_round_trip(sim: Start) -> None:
    url = sim()
    requests = {f"r{i}": {"model": "sim", "input": f"What is {i} + 1?", "seed": i} for i in range(3)}
    async with BatchAPI(url) as api:
        outcome = await runner(api).run(BatchState.new(RESPONSES), requests)
    assert {reply["object"] for reply in outcome.replies.values()} == {"response"} and len(outcome.replies) == 3


async def test_requests_are_split_by_count_and_bytes(sim: Start) -> None:
    url = sim()
    requests = chat_requests(10)
    async with BatchAPI(url) as api:
        state = BatchState.new(CHAT)
        outcome = await runner(api, limits=BatchLimits(max_requests=3)).run(state, requests)
        assert [len(job.custom_ids) for job in state.jobs] == [3, 3, 3, 1]
        assert outcome.succeeded == 10
        line_bytes = max(len(request_line(cid, CHAT, body)) for cid, body in requests.items())
        huge = {"huge": {"model": "sim", "messages": [{"role": "user", "content": "x" * 5 * line_bytes}]}}
        state = BatchState.new(CHAT)
        outcome = await runner(api, limits=BatchLimits(max_bytes=2 * line_bytes + 1)).run(state, {**requests, **huge})
    assert [len(job.custom_ids) for job in state.jobs] == [2] * 5
    assert outcome.succeeded == 10 and outcome.failures["huge"].kind == "too_large"
    assert not outcome.failures["huge"].retryable and "huge" not in state.assigned()
    served = await server_batches(url)
    assert sorted(batch["request_counts"]["total"] for batch in served) == [1, 2, 2, 2, 2, 2, 3, 3, 3]


async def test_partial_failures_become_typed_failures_without_resubmission(sim: Start) -> None:
    url = sim(batch_fail_rate=0.4, batch_delay_s=0)
    async with BatchAPI(url) as api:
        outcome = await runner(api, max_rounds=1).run(BatchState.new(CHAT), chat_requests(20))
    assert 0 < outcome.failed < 20 and outcome.succeeded + outcome.failed == 20
    assert set(outcome.replies).isdisjoint(outcome.failures)
    for failure in outcome.failures.values():
        assert (failure.kind, failure.status_code, failure.retryable, failure.attempts) == ("http", 500, True, 1)
        record = failure.as_record()
        assert record["type"] == "ProviderError" and record["stage"] == "generate" and record["status_code"] == 500
        assert failure.batch_id and failure.batch_id in record["message"]


async def test_partial_failures_are_sent_again_until_answered(sim: Start) -> None:
    url = sim(batch_fail_rate=0.4, batch_delay_s=0)
    async with BatchAPI(url) as api:
        state = BatchState.new(CHAT)
        outcome = await runner(api, max_rounds=8).run(state, chat_requests(20))
    assert (outcome.succeeded, outcome.failed) == (20, 0)
    first, *again = state.jobs
    assert again and first.request_counts is not None and first.request_counts.failed > 0
    assert len(again[0].custom_ids) == first.request_counts.failed  # only the failed requests go again
    assert all(job.round == index + 1 for index, job in enumerate(again))
    assert len(await server_batches(url)) == len(state.jobs)


async def test_expired_batch_sends_what_it_missed_in_a_new_batch(sim: Start) -> None:
    url = sim(batch_expire=1)
    requests = chat_requests(6)
    async with BatchAPI(url) as api:
        state = BatchState.new(CHAT)
        outcome = await runner(api).run(state, requests)
    assert (outcome.succeeded, outcome.failed) == (6, 0)
    expired, again = state.jobs
    assert expired.status == "expired" and "expired_at" in expired.timeline
    assert again.status == "completed" and again.round == 1
    assert again.custom_ids == list(requests)[3:]  # the half the expired batch never ran


async def test_failed_batch_is_a_final_failure(sim: Start) -> None:
    url = sim(batch_max_requests=2)
    async with BatchAPI(url) as api:
        state = BatchState.new(CHAT)
        outcome = await runner(api).run(state, chat_requests(3))
    assert outcome.failed == 3 and len(state.jobs) == 1 and state.jobs[0].status == "failed"
    assert {(f.kind, f.retryable) for f in outcome.failures.values()} == {("batch_failed", False)}
    assert "too_many_requests" in outcome.failures["rollout-0"].message


async def test_results_are_handed_over_per_batch(sim: Start) -> None:
    url = sim()
    handed: list[tuple[str, JobResults]] = []

    async def keep(job: BatchJob, results: JobResults) -> None:
        handed.append((job.key, results))

    async with BatchAPI(url) as api:
        outcome = await runner(api, limits=BatchLimits(max_requests=2)).run(
            BatchState.new(CHAT), chat_requests(5), on_results=keep
        )
    assert [key for key, _ in handed] == ["r0-0", "r0-1", "r0-2"]
    assert sum(len(results.replies) for _, results in handed) == 5 == outcome.succeeded
    assert outcome.replies == {}  # handed over, not kept


async def test_killed_run_resumes_its_batches_without_creating_new_ones(sim: Start) -> None:
    url = sim(batch_delay_s=0.3)
    requests = chat_requests(9)
    saved: list[str] = []

    def save_then_die(state: BatchState) -> None:
        saved.append(state.to_json())
        if sum(job.batch_id is not None for job in state.jobs) == 2:
            raise Killed

    async with BatchAPI(url, KEY) as api:
        with pytest.raises(Killed):
            await runner(api, limits=BatchLimits(max_requests=3)).run(
                BatchState.new(CHAT), requests, on_state=save_then_die
            )
    state = BatchState.from_json(saved[-1])
    assert [job.status for job in state.jobs] == ["validating", "validating", "planned"]
    assert KEY not in saved[-1]
    async with BatchAPI(url, KEY) as api:  # a new process: a new client, the state from its JSON
        outcome = await runner(api, limits=BatchLimits(max_requests=3)).run(state, requests)
    assert (outcome.succeeded, outcome.failed) == (9, 0)
    served = await server_batches(url)
    assert len(served) == 3 == len({batch["input_file_id"] for batch in served})
    assert {batch["id"] for batch in served} == {job.batch_id for job in state.jobs}


async def test_resume_adopts_a_batch_whose_creation_answer_was_lost(sim: Start) -> None:
    url = sim()
    saved: list[str] = []

    def save_then_die(state: BatchState) -> None:
        saved.append(state.to_json())
        if state.jobs[0].status == "creating":
            raise Killed

    async with BatchAPI(url) as api:
        with pytest.raises(Killed):
            await runner(api).run(BatchState.new(CHAT), chat_requests(4), on_state=save_then_die)
        state = BatchState.from_json(saved[-1])
        assert state.jobs[0].input_file_id and state.jobs[0].batch_id is None
        created = await api.create(state.jobs[0].input_file_id, CHAT)  # what the lost call did at the provider
        outcome = await runner(api).run(state)  # nothing left to upload: no bodies needed
    assert outcome.succeeded == 4 and state.jobs[0].batch_id == created.id
    assert [batch["id"] for batch in await server_batches(url)] == [created.id]


async def test_resume_refuses_to_guess_bodies_it_was_not_given(sim: Start) -> None:
    url = sim()
    state = BatchState.new(CHAT)
    state.jobs.append(BatchJob(key="r0-0", custom_ids=["a"]))
    async with BatchAPI(url) as api:
        with pytest.raises(RuntimeError, match="pass the same requests"):
            await runner(api).run(state)
    assert await server_batches(url) == []


async def test_cancel_ends_batches_and_sends_nothing_again(sim: Start) -> None:
    url = sim(batch_delay_s=3.0)
    async with BatchAPI(url) as api:
        state = BatchState.new(CHAT)
        batch_runner = runner(api)
        task = asyncio.create_task(batch_runner.run(state, chat_requests(30)))
        while not (state.jobs and state.jobs[0].request_counts and state.jobs[0].request_counts.completed >= 3):
            await asyncio.sleep(0.02)
        await batch_runner.cancel(state)
        assert state.jobs[0].cancel_requested
        outcome = await asyncio.wait_for(task, 10)
    assert state.jobs[0].status == "cancelled" and len(state.jobs) == 1
    assert outcome.succeeded >= 3 and outcome.succeeded + outcome.failed == 30
    assert {failure.kind for failure in outcome.failures.values()} == {"cancelled"}
    assert len(await server_batches(url)) == 1


async def test_batch_cancelled_elsewhere_is_sent_again(sim: Start) -> None:
    url = sim(batch_delay_s=2.0)
    async with BatchAPI(url) as api:
        state = BatchState.new(CHAT)
        task = asyncio.create_task(runner(api).run(state, chat_requests(20)))
        while not (state.jobs and state.jobs[0].request_counts and state.jobs[0].request_counts.completed >= 2):
            await asyncio.sleep(0.02)
        assert state.jobs[0].batch_id is not None
        await api.cancel(state.jobs[0].batch_id)  # someone cancels it in the provider's dashboard
        outcome = await asyncio.wait_for(task, 15)
    assert (outcome.succeeded, outcome.failed) == (20, 0)
    assert [job.status for job in state.jobs] == ["cancelled", "completed"]
    assert len(state.jobs[1].custom_ids) == 20 - (state.jobs[0].request_counts.completed or 0)


async def test_the_key_stays_out_of_errors_state_and_repr(sim: Start) -> None:
    url = sim()
    async with BatchAPI(url, KEY, retries=0) as api:
        with pytest.raises(BatchAPIError) as caught:
            await api.retrieve("batch_missing")
        assert caught.value.status_code == 404 and not caught.value.retryable
        assert KEY not in str(caught.value) and KEY not in repr(api)
        state = BatchState.new(CHAT)
        await runner(api).run(state, chat_requests(2))
        assert KEY not in state.to_json()

    def echo(request: httpx.Request) -> httpx.Response:  # a proxy that echoes the request headers in its error
        return httpx.Response(502, text=json.dumps(dict(request.headers)))

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
        api = BatchAPI("http://provider.invalid/v1", KEY, client=client, retries=1, backoff_s=0)
        with pytest.raises(BatchAPIError) as caught:
            await api.retrieve("batch_1")
    assert caught.value.status_code == 502 and caught.value.retryable
    assert KEY not in str(caught.value) and "Bearer ***" in str(caught.value)

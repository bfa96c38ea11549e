"""The generate stage's batch rounds (rollouts/stages/batched.py) on their own: a turn's calls answered from the
results a killed run stored, without a request; a provider that refuses the upload fails the calls as typed
ProviderErrors and closes the batch it never created; the progress board gets the batches' counts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from rollouts.batch import BatchAPI
from rollouts.client.model import ModelClient
from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.config import BatchConfig
from rollouts.errors import ProviderError
from rollouts.sim import SimConfig, serve_in_thread
from rollouts.stages.batched import ShardBatches, batch_timeline, custom_id_of
from rollouts.storage import Store

KEY = "sk-turns-secret-0123456789"
REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1},
}


def shard_batches(tmp_path: Path, handler: Any, board: ProgressBoard | None = None, base: str = "http://p/v1"):
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler)) if handler else httpx.AsyncClient()
    api = BatchAPI(base, KEY, client=http, retries=0, owns_client=True)
    client = ModelClient(httpx.AsyncClient(), base, "m", "chat", max_retries=0)
    config = BatchConfig(enabled=True, poll_interval=0.05)
    return ShardBatches(
        Store(str(tmp_path)), "00000", config, client, api, board or ProgressBoard(), InflightLimiter(4)
    )


async def two_calls(batches: ShardBatches) -> list[Any]:
    batches.expect(2)

    async def one(custom_id: str) -> Any:
        try:
            return await batches.call(custom_id, 0, [{"role": "user", "content": "q"}], {}, {"temperature": 0})
        except ProviderError as exc:
            return exc
        finally:
            batches.finished()

    try:
        results = await asyncio.gather(batches.drive(), one("a"), one("b"))
    finally:
        await batches.runner.api.aclose()
        await batches.client.http.aclose()
    return results[1:]


def test_stored_results_answer_a_resumed_turn_without_any_request(tmp_path):
    lines = [
        {"custom_id": "a", "reply": REPLY, "attempts": 2},
        {
            "custom_id": "b",
            "failure": {
                "custom_id": "b",
                "kind": "http",
                "message": "HTTP 400: bad",
                "status_code": 400,
                "retryable": False,
                "batch_id": "batch_1",
                "attempts": 1,
            },
            "attempts": 1,
        },
    ]
    folder = tmp_path / "batches" / "00000"
    folder.mkdir(parents=True)
    (folder / "turn-0.results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    def no_request(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    call, failure = asyncio.run(two_calls(shard_batches(tmp_path, no_request)))
    assert call.output[-1]["content"][0]["text"] == "42" and call.attempts == 2 and call.output_tokens == 1
    assert isinstance(failure, ProviderError) and failure.status_code == 400 and failure.retryable is False
    assert "batch_1" in failure.message


def test_a_refused_upload_fails_the_calls_typed_and_closes_the_batch(tmp_path):
    def refuse(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(403, json={"error": {"message": f"key {KEY} may not use batches"}})

    results = asyncio.run(two_calls(shard_batches(tmp_path, refuse)))
    assert all(isinstance(r, ProviderError) and r.status_code == 403 and not r.retryable for r in results)
    assert all(KEY not in r.message and "may not use batches" in r.message for r in results)
    state = json.loads((tmp_path / "batches" / "00000" / "turn-0.json").read_text())
    assert [(job["status"], job["collected"]) for job in state["jobs"]] == [("failed", True)]
    assert custom_id_of("abc", 0) == "abc" and custom_id_of("abc", 2) == "abc-2"


def test_a_turn_through_the_simulated_provider_moves_the_board(tmp_path):
    url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=1, batch_delay_s=0.1))
    try:
        board = ProgressBoard()
        calls = asyncio.run(two_calls(shard_batches(tmp_path, None, board, base=url)))
    finally:
        stop()
    assert all(call.output and call.attempts == 1 for call in calls)
    snap = board.snapshot()
    assert (snap.batch_requests, snap.batch_answered, snap.batch_running) == (2, 2, 0)
    assert snap.batch_ids == 3  # the input file, the batch, its output file: what the manifest copies
    (row,) = batch_timeline(Store(str(tmp_path)))
    assert row["status"] == "completed" and row["requests"] == 2 and row["ended_after_s"] is not None


def test_batch_counts_travel_from_a_worker_board_to_the_flows():
    from rollouts.collector.channel import KEY_ENV, ProgressListener, ProgressReporter

    shown, worker = ProgressBoard(), ProgressBoard()
    listener = ProgressListener(shown)
    try:
        env = listener.env()
        reporter = ProgressReporter(worker, env["ROLLOUTS_PROGRESS_ADDRESS"], bytes.fromhex(env[KEY_ENV]), 60)
        worker.add_batch(requests=10, answered=4, running=2, ids=4)
        worker.add(generated=3)
        assert reporter.flush()
        worker.add_batch(answered=6, running=-2)
        assert reporter.flush()
        deadline = time.monotonic() + 10
        while shown.snapshot().batch_answered < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        listener.close()
    snap = shown.snapshot()
    assert (snap.batch_requests, snap.batch_answered, snap.batch_running, snap.generated) == (10, 10, 0, 3)
    assert snap.batch_ids == 4

"""The simulated server's Files and Batch APIs over loopback: uploads, batch life cycle, faults, expiry, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rollouts.sim import SimConfig, serve_in_thread, start_sim_server

CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
Start = Callable[..., httpx.Client]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a simulated server in this process with SimConfig options; returns a client on its /v1 URL."""
    stops: list[Callable[[], None]] = []
    clients: list[httpx.Client] = []

    def run(**options: Any) -> httpx.Client:
        url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=11, **options))
        stops.append(stop)
        clients.append(httpx.Client(base_url=url, timeout=10))
        return clients[-1]

    yield run
    for client in clients:
        client.close()
    for stop in stops:
        stop()


def body(i: int) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": f"What is {i} + {i * 3}?"}], "seed": i}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: httpx.Client, data: bytes, purpose: str = "batch") -> httpx.Response:
    return client.post("/files", data={"purpose": purpose}, files={"file": ("in.jsonl", data, "application/jsonl")})


def submit(client: httpx.Client, count: int, url: str = CHAT) -> dict[str, Any]:
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body(i)} for i in range(count)]
    file_id = upload(client, jsonl(lines)).json()["id"]
    response = client.post("/batches", json={"input_file_id": file_id, "endpoint": url, "completion_window": "24h"})
    assert response.status_code == 200, response.text
    return response.json()


def wait(client: httpx.Client, batch_id: str, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in TERMINAL:
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not finish")


def lines_of(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.get(f"/files/{file_id}/content").content.splitlines()]


def test_file_upload_metadata_and_content_round_trip(start: Start) -> None:
    client = start()
    data = jsonl([{"custom_id": "a", "method": "POST", "url": CHAT, "body": body(1)}])
    uploaded = upload(client, data).json()
    assert uploaded["id"].startswith("file-") and uploaded["purpose"] == "batch" and uploaded["bytes"] == len(data)
    assert client.get(f"/files/{uploaded['id']}").json()["filename"] == "in.jsonl"
    assert client.get(f"/files/{uploaded['id']}/content").content == data
    assert client.get("/files/file-nope").status_code == 404
    assert upload(client, data, purpose="nonsense").status_code == 400
    second = upload(client, data).json()
    listed = client.get("/files", params={"limit": 1, "purpose": "batch"}).json()  # newest first, as OpenAI lists
    assert [f["id"] for f in listed["data"]] == [second["id"]] and listed["has_more"]


def test_batch_completes_with_the_live_answers(start: Start) -> None:
    client = start(batch_delay_s=0.2)
    created = submit(client, 4)
    assert created["status"] == "validating" and created["completion_window"] == "24h"
    assert created["endpoint"] == CHAT and created["object"] == "batch"
    batch = wait(client, created["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert batch["error_file_id"] is None
    assert batch["in_progress_at"] and batch["finalizing_at"] and batch["completed_at"]
    outputs = lines_of(client, batch["output_file_id"])
    assert sorted(line["custom_id"] for line in outputs) == [f"req-{i}" for i in range(4)]
    for line in outputs:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        live = client.post("/chat/completions", json=body(int(line["custom_id"].split("-")[1]))).json()
        batched = line["response"]["body"]
        assert batched["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
        assert batched["usage"] == live["usage"]


def test_responses_endpoint_batches(start: Start) -> None:
    client = start(batch_delay_s=0)
    lines = [
        {
            "custom_id": "r",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "sim", "input": "What is 2 + 3?", "seed": 1},
        }
    ]
    file_id = upload(client, jsonl(lines)).json()["id"]
    batch = client.post(
        "/batches", json={"input_file_id": file_id, "endpoint": "/v1/responses", "completion_window": "24h"}
    ).json()
    batch = wait(client, batch["id"])
    (output,) = lines_of(client, batch["output_file_id"])
    assert output["response"]["body"]["object"] == "response"


def test_progress_is_visible_while_in_progress(start: Start) -> None:
    client = start(batch_delay_s=1.0)
    created = submit(client, 10)
    seen = set()
    while (batch := client.get(f"/batches/{created['id']}").json())["status"] not in TERMINAL:
        if batch["status"] == "in_progress":
            seen.add(batch["request_counts"]["completed"])
        time.sleep(0.05)
    assert len(seen) >= 3 and min(seen) < 10  # counts grow while the batch runs


def test_fail_rate_fails_some_requests_into_the_error_file(start: Start) -> None:
    client = start(batch_delay_s=0, batch_fail_rate=0.5)
    batch = wait(client, submit(client, 20)["id"])
    errors = lines_of(client, batch["error_file_id"])
    outputs = lines_of(client, batch["output_file_id"])
    assert batch["status"] == "completed"
    assert 0 < len(errors) < 20 and len(errors) + len(outputs) == 20
    assert batch["request_counts"] == {"total": 20, "completed": len(outputs), "failed": len(errors)}
    assert {line["response"]["status_code"] for line in errors} == {500}


def test_expired_batch_keeps_what_it_finished(start: Start) -> None:
    client = start(batch_delay_s=0.1, batch_expire=1)
    batch = wait(client, submit(client, 6)["id"])
    assert batch["status"] == "expired" and batch["expired_at"]
    assert len(lines_of(client, batch["output_file_id"])) == 3
    errors = lines_of(client, batch["error_file_id"])
    assert [line["error"]["code"] for line in errors] == ["batch_expired"] * 3
    assert all(line["response"] is None for line in errors)
    assert wait(client, submit(client, 2)["id"])["status"] == "completed"  # only the first batch expires


def test_cancel_stops_a_batch_midway(start: Start) -> None:
    client = start(batch_delay_s=2.0)
    created = submit(client, 20)
    time.sleep(0.3)
    cancelling = client.post(f"/batches/{created['id']}/cancel").json()
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"]
    batch = wait(client, created["id"])
    assert batch["status"] == "cancelled"
    done = lines_of(client, batch["output_file_id"])
    assert 0 < len(done) < 20 and batch["request_counts"]["completed"] == len(done)
    assert client.post(f"/batches/{created['id']}/cancel").json()["status"] == "cancelled"
    finished = wait(client, submit(client, 1)["id"])
    assert client.post(f"/batches/{finished['id']}/cancel").status_code == 400


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ([{"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": body(1)}], "mismatched_endpoint"),
        ([{"custom_id": "a", "method": "POST", "url": CHAT, "body": body(1)}] * 2, "duplicate_custom_id"),
        ([{"custom_id": "a", "method": "GET", "url": CHAT, "body": body(1)}], "invalid_request"),
    ],
)
def test_invalid_input_fails_the_batch_with_line_errors(start: Start, lines: list[dict[str, Any]], code: str) -> None:
    client = start(batch_delay_s=0)
    file_id = upload(client, jsonl(lines)).json()["id"]
    created = client.post("/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
    batch = wait(client, created.json()["id"])
    assert batch["status"] == "failed" and batch["failed_at"]
    assert code in {error["code"] for error in batch["errors"]["data"]}
    assert batch["output_file_id"] is None


def test_request_limit_and_create_validation(start: Start) -> None:
    client = start(batch_delay_s=0, batch_max_requests=3)
    assert wait(client, submit(client, 4)["id"])["errors"]["data"][0]["code"] == "too_many_requests"
    file_id = upload(client, jsonl([{"custom_id": "a", "method": "POST", "url": CHAT, "body": body(1)}])).json()["id"]
    bad_window = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "1h"}
    assert client.post("/batches", json=bad_window).status_code == 400
    assert (
        client.post(
            "/batches", json={**bad_window, "completion_window": "24h", "endpoint": "/v1/embeddings"}
        ).status_code
        == 400
    )
    assert (
        client.post("/batches", json={**bad_window, "completion_window": "24h", "input_file_id": "file-x"}).status_code
        == 404
    )


def test_list_pages_newest_first(start: Start) -> None:
    client = start(batch_delay_s=0)
    ids = [submit(client, 1)["id"] for _ in range(5)]
    first = client.get("/batches", params={"limit": 2}).json()
    assert [batch["id"] for batch in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/batches", params={"limit": 10, "after": first["last_id"]}).json()
    assert [batch["id"] for batch in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    assert client.get("/batches/batch_nope").status_code == 404


def test_batch_options_are_command_line_flags() -> None:
    config = SimConfig(batch_delay_s=0, batch_expire=-1, batch_max_requests=5)
    assert config.to_argv() == ["--batch-delay-s", "0.0", "--batch-expire", "-1", "--batch-max-requests", "5"]
    with (
        start_sim_server(latency_ms=0, batch_delay_s=0, batch_expire=-1) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        assert [wait(client, submit(client, 2)["id"])["status"] for _ in range(2)] == ["expired", "expired"]

"""Batch lines, splitting by per-file limits, result lines and their classification, and the state's JSON form."""

from __future__ import annotations

import json

import pytest

from rollouts.batch import CHAT, BatchInputError, BatchJob, BatchLimits, BatchState, classify, request_line
from rollouts.batch.jsonl import read_results, split_lines


def test_request_line_is_one_openai_batch_line() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}
    raw = request_line("rollout-1", CHAT, body)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {"custom_id": "rollout-1", "method": "POST", "url": CHAT, "body": body}
    assert "héllo".encode() in raw  # not escaped: bytes are counted as sent


@pytest.mark.parametrize(
    ("custom_id", "body", "match"),
    [
        ("a", {"model": "m", "messages": [], "stream": True}, "cannot stream"),
        ("a", {"messages": []}, "needs a model"),
        ("", {"model": "m"}, "custom_id"),
    ],
)
def test_request_line_refuses_what_a_batch_cannot_take(custom_id: str, body: dict[str, object], match: str) -> None:
    with pytest.raises(BatchInputError, match=match):
        request_line(custom_id, CHAT, body)


def test_unknown_endpoint_is_refused() -> None:
    with pytest.raises(BatchInputError, match="chat/completions"):
        BatchState.new("/v1/embeddings")
    assert BatchState.new("/chat/completions").endpoint == "/chat/completions"  # Azure's spelling


def test_split_fills_files_in_order_up_to_both_limits() -> None:
    lines = [(f"id{i}", b"x" * size + b"\n") for i, size in enumerate([9, 9, 9, 29, 9, 49, 9])]
    files, too_large = split_lines(lines, BatchLimits(max_requests=3, max_bytes=30))
    assert [batch_file.custom_ids for batch_file in files] == [("id0", "id1", "id2"), ("id3",), ("id4", "id6")]
    assert too_large == ["id5"]
    assert all(len(batch_file.data) <= 30 for batch_file in files)
    assert b"".join(batch_file.data for batch_file in files) == b"".join(raw for cid, raw in lines if cid != "id5")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchLimits(max_requests=0)


def test_read_results_skips_what_is_not_a_result() -> None:
    data = b"\n".join(
        [
            json.dumps(
                {
                    "id": "1",
                    "custom_id": "a",
                    "response": {"status_code": 200, "request_id": "req_1", "body": {"ok": 1}},
                    "error": None,
                }
            ).encode(),
            b"not json",
            b"[]",
            b"",
            json.dumps(
                {"id": "2", "custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "late"}}
            ).encode(),
        ]
    )
    first, second = read_results(data)
    assert first.ok and first.body == {"ok": 1} and first.request_id == "req_1"
    assert not second.ok and second.status_code is None and second.error == {"code": "batch_expired", "message": "late"}


def result(custom_id: str, status: int | None = 200, error: dict[str, str] | None = None) -> bytes:
    response = None if status is None else {"status_code": status, "request_id": "r", "body": {"n": custom_id}}
    return json.dumps({"id": "x", "custom_id": custom_id, "response": response, "error": error}).encode() + b"\n"


def test_classify_each_kind_of_outcome() -> None:
    data = (
        result("ok")
        + result("limited", 429)
        + result("bad", 400)
        + result("late", None, {"code": "batch_expired"})
        + result("stranger")
        + result("weird", None, {"code": "invalid_body"})
    )
    ids = ["ok", "limited", "bad", "late", "gone", "weird"]
    results = classify(ids, read_results(data), batch_id="batch_1", status="completed", attempts=2)
    assert results.replies == {"ok": {"n": "ok"}}
    kinds = {cid: (f.kind, f.status_code, f.retryable, f.attempts) for cid, f in results.failures.items()}
    assert kinds == {
        "limited": ("http", 429, True, 2),
        "bad": ("http", 400, False, 2),
        "late": ("expired", None, True, 2),
        "gone": ("missing", None, True, 2),
        "weird": ("error", None, False, 2),
    }
    unrun = classify(["a"], [], batch_id="batch_2", status="cancelled")
    assert unrun.failures["a"].kind == "cancelled" and unrun.failures["a"].retryable


def test_a_reply_wins_over_an_error_line_for_the_same_request() -> None:
    results = classify(["a"], read_results(result("a", 500) + result("a")), batch_id="b", status="completed")
    assert results.replies == {"a": {"n": "a"}} and results.failures == {}


def test_failed_batch_is_retryable_only_for_load_errors() -> None:
    load = classify(["a"], [], batch_id="b", status="failed", errors=[{"code": "token_limit_exceeded", "message": "x"}])
    refused = classify(["a"], [], batch_id="b", status="failed", errors=[{"code": "invalid_json_line", "message": "y"}])
    assert load.failures["a"].retryable and not refused.failures["a"].retryable
    assert "invalid_json_line" in refused.failures["a"].as_record()["message"]


def test_state_round_trips_through_json() -> None:
    state = BatchState.new(CHAT)
    state.jobs.append(
        BatchJob(
            key="r0-0",
            custom_ids=["a", "b"],
            status="in_progress",
            batch_id="batch_1",
            input_file_id="file-1",
            uploaded_at=5,
            timeline={"created_at": 6},
        )
    )
    again = BatchState.from_json(state.to_json())
    assert again == state and again.jobs[0].in_flight and again.assigned() == {"a", "b"}
    assert again.timeline() == [
        {"key": "r0-0", "round": 0, "batch_id": "batch_1", "status": "in_progress", "requests": 2, "created_at": 6}
    ]
    with pytest.raises(ValueError, match="version"):
        BatchState.from_json(state.to_json().replace('"version":1', '"version":9'))

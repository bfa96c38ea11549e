"""Our batch input lines read by a faithful copy of the request model of vLLM's `run-batch` (tests/servers/)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rollouts.batch import CHAT, RESPONSES, BatchLimits, build_files
from rollouts.client.model import chat_body
from rollouts.client.token_fields import SOURCE_REQUESTS
from tests.servers.vllm_batch import BatchRequestInput, ChatCompletionRequest

GYM = Path(__file__).resolve().parents[1] / "fixtures" / "process" / "gym.jsonl"
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}

SINGLE_TURN = {
    "model": "teacher",
    "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 17 * 3?"}],
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 512,
    "seed": 1234,
    "n": 1,
}
TOOL_TURN = {  # the second model call of a tool rollout: the history holds the first call and its result
    "model": "teacher",
    "tools": [CALCULATOR],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "max_completion_tokens": 256,
    "temperature": 1.0,
    "seed": 7,
    "messages": [
        {"role": "user", "content": "Use the calculator: what is (4 + 5) * 3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "(4 + 5) * 3"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "27"},
    ],
}
LOGPROBS = {
    "model": "teacher",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
    "logprobs": True,
    "top_logprobs": 2,
    "max_tokens": 8,
}
IMAGE = {
    "model": "teacher",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ],
        }
    ],
}
BODIES: dict[str, dict[str, Any]] = {"single": SINGLE_TURN, "tool": TOOL_TURN, "logprobs": LOGPROBS, "image": IMAGE}


def lines(requests: dict[str, dict[str, Any]], endpoint: str = CHAT) -> list[dict[str, Any]]:
    files, too_large = build_files(requests, endpoint, BatchLimits())
    assert not too_large
    return [json.loads(line) for batch_file in files for line in batch_file.data.splitlines()]


def ignored_fields(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "ignored" in record.getMessage()]


def test_chat_lines_validate_against_vllms_batch_request_input(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vllm.entrypoints.openai.protocol")
    for line in lines(BODIES):
        parsed = BatchRequestInput.model_validate(line)
        assert (parsed.method, parsed.url) == ("POST", "/v1/chat/completions")
        assert isinstance(parsed.body, ChatCompletionRequest)
        assert parsed.body.model == "teacher"
        assert parsed.body.messages and parsed.body.stream is False
    assert ignored_fields(caplog) == []  # vLLM would read every field we send


def test_parsed_bodies_keep_what_we_asked_for() -> None:
    by_id = {line["custom_id"]: BatchRequestInput.model_validate(line).body for line in lines(BODIES)}
    assert set(by_id) == set(BODIES)
    single, tool, logprobs = by_id["single"], by_id["tool"], by_id["logprobs"]
    assert (single.seed, single.max_tokens, single.temperature, single.top_p) == (1234, 512, 0.7, 0.95)
    assert tool.tool_choice == "auto" and tool.tools is not None and tool.tools[0].function.name == "calculator"
    assert tool.max_completion_tokens == 256 and tool.parallel_tool_calls is False
    assert [message["role"] for message in tool.messages] == ["user", "assistant", "tool"]
    assert (logprobs.logprobs, logprobs.top_logprobs) == (True, 2)


def test_the_copy_notices_what_vllm_would_ignore_or_refuse(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vllm.entrypoints.openai.protocol")
    (line,) = lines({"x": {**SINGLE_TURN, "not_a_vllm_field": 1}})
    BatchRequestInput.model_validate(line)
    assert any("not_a_vllm_field" in message for message in ignored_fields(caplog))
    (line,) = lines({"x": {**SINGLE_TURN, "top_logprobs": 3}})  # top_logprobs without logprobs
    with pytest.raises(ValidationError, match="logprobs"):
        BatchRequestInput.model_validate(line)
    (line,) = lines({"x": {**TOOL_TURN, "tool_choice": {"type": "function", "function": {"name": "other"}}}})
    with pytest.raises(ValidationError, match="does not match"):
        BatchRequestInput.model_validate(line)


def test_responses_lines_are_not_for_vllm_run_batch() -> None:
    (line,) = lines({"r": {"model": "teacher", "input": "hi"}}, RESPONSES)
    assert line["url"] == "/v1/responses"
    with pytest.raises(ValidationError):
        BatchRequestInput.model_validate(line)


def test_the_bodies_our_client_builds_are_read_whole_by_vllm(caplog: pytest.LogCaptureFixture) -> None:
    """Not hand-written bodies: the chat client's own, for a tool rollout's second call with --return-tokens (vLLM's
    token fields), and for a row whose `tools` list is empty (vLLM refuses `tools: []`; the body leaves it out)."""
    caplog.set_level(logging.WARNING, logger="vllm.entrypoints.openai.protocol")
    row = json.loads(GYM.read_text().splitlines()[4])  # the calculator rollout: call, result, answer
    params = row["responses_create_params"]
    second_call = [*params["input"], *row["response"]["output"][:2]]  # the history holds the call and its result
    sampling = {"temperature": 1.0, "max_output_tokens": 64, "seed": 3}
    bodies = {
        "tool": chat_body("teacher", second_call, params, sampling, True, SOURCE_REQUESTS["vllm"]),
        "no-tools": chat_body("teacher", params["input"], {**params, "tools": []}, sampling, False),
    }
    assert "tools" not in bodies["no-tools"] and "tool_choice" not in bodies["no-tools"]
    parsed = {line["custom_id"]: BatchRequestInput.model_validate(line).body for line in lines(bodies)}
    tool = parsed["tool"]
    assert [message["role"] for message in tool.messages] == ["system", "user", "assistant", "tool"]
    assert tool.return_token_ids is True and (tool.logprobs, tool.top_logprobs) == (True, 0)
    assert tool.tools is not None and tool.tools[0].function.name == "calculator"
    assert ignored_fields(caplog) == []  # every field is one vLLM reads

"""Token fields from model replies: vLLM, SGLang and NeMo RL shapes, the token_id:N fallback, and the typed error."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rollouts.client.model import ModelClient, parse_chat, parse_responses
from rollouts.client.token_fields import (
    CHAT_TOKEN_REQUEST,
    TokenFieldsError,
    _chat_fields,
    chat_token_fields,
    responses_token_fields,
    tokenize_request,
    with_prompt_ids,
)
from rollouts.errors import ResponseParseError
from rollouts.sim import SimConfig, serve_in_thread

MESSAGE = {"role": "assistant", "content": "4"}


def chat(choice: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "message": dict(MESSAGE), "finish_reason": "stop", **choice}], **top}


def logprobs(*entries: tuple[str, float]) -> dict[str, Any]:
    return {"content": [{"token": token, "logprob": value, "top_logprobs": []} for token, value in entries]}


def test_vllm_return_token_ids_shape() -> None:
    data = chat(
        {"token_ids": [7, 8], "logprobs": logprobs((" 4", -0.5), ("<|im_end|>", -0.25))}, prompt_token_ids=[1, 2, 3]
    )
    fields = chat_token_fields(data, asked=True)
    assert fields == {
        "prompt_token_ids": [1, 2, 3],
        "generation_token_ids": [7, 8],
        "generation_log_probs": [-0.5, -0.25],
    }


def test_sglang_prompt_ids_on_the_choice_and_meta_info_triples() -> None:
    meta = {"output_token_logprobs": [[-0.5, 7, None], [-0.25, 8, "x"]]}
    fields = chat_token_fields(chat({"prompt_token_ids": [1, 2], "meta_info": meta}), asked=True)
    assert fields == {"prompt_token_ids": [1, 2], "generation_token_ids": [7, 8], "generation_log_probs": [-0.5, -0.25]}


@pytest.mark.parametrize(
    "meta",
    [
        {"output_token_logprobs": [{"logprob": -0.5, "token_id": 7}, {"logprob": -0.25, "token_id": 8}]},
        {"output_token_logprobs_val": [-0.5, -0.25], "output_token_logprobs_idx": [7, 8]},
        {"output_token_logprobs_val": [-0.5, -0.25], "output_ids": [7, 8]},
    ],
)
def test_sglang_meta_info_variants(meta: dict[str, Any]) -> None:
    fields = chat_token_fields(chat({"prompt_token_ids": [1], "meta_info": meta}), asked=True)
    assert (fields["generation_token_ids"], fields["generation_log_probs"]) == ([7, 8], [-0.5, -0.25])


def test_logprob_tokens_of_the_form_token_id_n_are_the_fallback() -> None:
    data = chat({"logprobs": logprobs(("token_id:7", -0.5), ("token_id:8", -0.25))}, prompt_token_ids=[1])
    assert chat_token_fields(data, asked=True)["generation_token_ids"] == [7, 8]


def test_a_complete_bundle_on_the_message_wins() -> None:
    message = {**MESSAGE, "prompt_token_ids": [1], "generation_token_ids": [9], "generation_log_probs": [-1.0]}
    data = {"choices": [{"message": message}], "prompt_token_ids": [5, 5]}
    assert chat_token_fields(data, asked=True) == {
        "prompt_token_ids": [1],
        "generation_token_ids": [9],
        "generation_log_probs": [-1.0],
    }


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        (chat({}), ["prompt_token_ids", "generation_token_ids", "generation_log_probs"]),
        (chat({"token_ids": [7]}, prompt_token_ids=[1]), ["generation_log_probs"]),
        (chat({"logprobs": logprobs((" 4", -0.5))}, prompt_token_ids=[1]), ["generation_token_ids"]),
    ],
)
def test_asked_and_absent_is_a_typed_error_naming_what_is_missing(data: dict[str, Any], missing: list[str]) -> None:
    with pytest.raises(TokenFieldsError, match="vLLM >= 0.10.2") as caught:
        parse_chat(data, return_tokens=True)
    assert isinstance(caught.value, ResponseParseError) and caught.value.missing == missing
    restored = pickle.loads(pickle.dumps(caught.value))
    assert type(restored) is TokenFieldsError and restored.missing == missing


def test_not_asked_keeps_text_only_and_ignores_partial_fields() -> None:
    call = parse_chat(chat({"token_ids": [7]}), return_tokens=False)
    assert call.output[-1]["content"][0]["text"] == "4" and "generation_token_ids" not in call.output[-1]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            chat(
                {"token_ids": [7, 8], "logprobs": logprobs(("token_id:7", -0.5), ("token_id:9", -0.1))},
                prompt_token_ids=[1],
            ),
            "disagree",
        ),
        (chat({"token_ids": [7, 8], "logprobs": logprobs((" 4", -0.5))}, prompt_token_ids=[1]), "1 log-probabilities"),
        (
            chat({"token_ids": ["7", 8], "logprobs": logprobs(("a", -0.5), ("b", -0.1))}, prompt_token_ids=[1]),
            "integer",
        ),
        (
            chat({"token_ids": [7, 8], "logprobs": logprobs(("a", -0.5), ("b", -0.1))}, prompt_token_ids="1 2"),
            "integer",
        ),
        (chat({"meta_info": {"output_token_logprobs": [["x", 7]]}}, prompt_token_ids=[1]), "malformed"),
    ],
)
def test_contradictory_or_malformed_fields_are_errors_when_asked(data: dict[str, Any], match: str) -> None:
    with pytest.raises(TokenFieldsError, match=match):
        chat_token_fields(data, asked=True)
    assert chat_token_fields(data, asked=False) == {}


BUNDLE = {"prompt_token_ids": [1], "generation_token_ids": [7], "generation_log_probs": [-0.5]}


@pytest.mark.parametrize(
    "data",
    [
        chat({}),
        chat({"token_ids": [7], "logprobs": logprobs(("a", -0.5))}),  # no prompt ids anywhere
        chat({"token_ids": [7], "logprobs": logprobs(("a", -0.5))}, prompt_token_ids=[1, 2]),
        chat({"prompt_token_ids": [1], "meta_info": {"output_token_logprobs": [[-0.5, 7]]}}),
        chat({"prompt_token_ids": [1]}),
        chat({"message": {**MESSAGE, **BUNDLE}}),
        chat({"message": {**MESSAGE, "generation_token_ids": [7]}}),
        chat({"logprobs": logprobs(("token_id:7", -0.5))}, prompt_token_ids="bad"),
        {"choices": []},
    ],
)
def test_not_asked_reads_what_the_full_reading_reads(data: dict[str, Any]) -> None:
    """Without --return-tokens a reply with no prompt ids is read as {} at once; the full reading agrees."""
    try:
        want = _chat_fields(data, asked=False)
    except TokenFieldsError:
        want = {}
    assert chat_token_fields(data, asked=False) == want


def test_responses_fields_move_to_the_last_output_item() -> None:
    output = [
        {"type": "reasoning", "prompt_token_ids": [1], "generation_token_ids": [2], "generation_log_probs": [-1]},
        {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
    ]
    responses_token_fields(output, asked=True)
    assert "prompt_token_ids" not in output[0]
    assert output[1]["generation_token_ids"] == [2] and output[1]["generation_log_probs"] == [-1]
    with pytest.raises(TokenFieldsError, match="none returned"):
        parse_responses({"output": [{"type": "message", "content": []}]}, return_tokens=True)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=3))
    yield url
    stop()


@pytest.fixture(scope="module")
def http(sim_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_url, timeout=10) as client:
        yield client


def _post(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "flags",
    [
        {"logprobs": True, "return_token_ids": True},  # vLLM
        {"logprobs": True, "return_prompt_token_ids": True, "return_meta_info": True},  # SGLang
        {"logprobs": True, "return_tokens_as_token_ids": True, "return_prompt_token_ids": True},  # ids only in logprobs
        CHAT_TOKEN_REQUEST,
    ],
)
def test_every_shape_the_simulated_server_speaks_reads_to_the_same_fields(
    http: httpx.Client, flags: dict[str, Any]
) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "temperature": 0}
    reference = _post(http, request | {"logprobs": True, "return_token_ids": True})
    expected = reference["prompt_token_ids"], reference["choices"][0]["token_ids"]
    fields = parse_chat(_post(http, request | flags), return_tokens=True).output[-1]
    assert (fields["prompt_token_ids"], fields["generation_token_ids"]) == expected
    assert len(fields["generation_log_probs"]) == len(expected[1])


def test_model_client_fails_the_call_with_the_typed_error_when_the_server_returns_no_ids(sim_url: str) -> None:
    async def call(return_tokens: bool) -> Any:
        # A Responses reply without return_token_ids in the body: what a server without token support sends back.
        transport = httpx.MockTransport(
            lambda request: httpx.Response(200, json={"output": [{"type": "message", "content": []}]})
        )
        async with httpx.AsyncClient(transport=transport) as http:
            client = ModelClient(http, sim_url, "m", "responses", max_retries=3, return_tokens=return_tokens)
            return await client.create([{"role": "user", "content": "hi"}], {}, {})

    with pytest.raises(TokenFieldsError) as caught:
        asyncio.run(call(True))
    assert caught.value.status_code == 200 and caught.value.attempts == 1
    assert asyncio.run(call(False)).output[-1]["type"] == "message"


def test_a_server_with_only_token_id_logprobs_gets_its_prompt_ids_from_tokenize(
    http: httpx.Client, sim_url: str
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "calculator", "parameters": {}}}],
    }
    reference = _post(http, body | {"return_token_ids": True, "logprobs": True})
    old_style = _post(http, body | {"logprobs": True, "return_tokens_as_token_ids": True})
    with pytest.raises(TokenFieldsError) as caught:
        parse_chat(old_style, return_tokens=True)
    assert caught.value.only_prompt_missing
    url, tokenize_body = tokenize_request(sim_url, body)
    assert url.endswith("/tokenize") and "/v1/" not in url and set(tokenize_body) == {"model", "messages", "tools"}
    reply = httpx.post(url, json=tokenize_body, timeout=10).json()
    fields = parse_chat(with_prompt_ids(old_style, reply), return_tokens=True).output[-1]
    assert fields["prompt_token_ids"] == reference["prompt_token_ids"]
    assert fields["generation_token_ids"] == reference["choices"][0]["token_ids"]

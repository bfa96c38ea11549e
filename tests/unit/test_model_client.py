"""Model client: request mapping for both APIs, response parsing, and the retry policy (faults injected)."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import ModelClient, chat_body, items_to_chat, parse_chat, parse_responses, responses_body
from rollouts.client.retry import RetryPolicy, model_output_fault
from rollouts.errors import ConversionError, ModelOutputError, ProviderError, ResponseParseError

ITEMS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "input_text", "text": "What is 2+3?"}]},
    {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": '{"expression": "2+3"}'},
    {"type": "function_call_output", "call_id": "c1", "output": "5"},
    {"type": "reasoning", "summary": []},
]
TOOLS = [{"type": "function", "name": "calc", "description": "math", "parameters": {"type": "object"}}]


def test_items_map_to_chat_messages_with_tool_calls():
    assert items_to_chat(ITEMS) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+3?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"expression": "2+3"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]


def test_instructions_are_the_leading_system_message_of_a_chat_request():
    body = chat_body("m", ITEMS[1:2], {"instructions": "Be terse.", "tools": TOOLS}, {}, False)
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+3?"}]


def test_chat_body_maps_tools_sampling_and_token_requests():
    body = chat_body(
        "m",
        ITEMS[:2],
        {"tools": TOOLS, "tool_choice": "auto"},
        {"temperature": 0.5, "max_output_tokens": 9, "seed": 3},
        True,
    )
    assert body["tools"] == [
        {"type": "function", "function": {"name": "calc", "description": "math", "parameters": {"type": "object"}}}
    ]
    assert (
        body["max_tokens"] == 9 and body["temperature"] == 0.5 and body["seed"] == 3 and body["tool_choice"] == "auto"
    )
    assert body["logprobs"] is True and body["return_token_ids"] is True


async def test_a_clients_request_bodies_convert_each_tools_list_once_and_equal_chat_body():
    async with httpx.AsyncClient() as http:
        client = ModelClient(http, "http://127.0.0.1:1/v1", "m", "chat", max_retries=0)
        params, other = {"tools": TOOLS, "tool_choice": "auto"}, {"tools": [dict(TOOLS[0], name="calc2")]}
        sampling = {"temperature": 0.5}
        first, second = (client.request_body(ITEMS[: 2 + i], params, sampling) for i in range(2))
        assert first == chat_body("m", ITEMS[:2], params, sampling, False)
        assert second == chat_body("m", ITEMS[:3], params, sampling, False)
        assert first["tools"] is second["tools"]  # converted once for the list
        third = client.request_body(ITEMS[:2], other, sampling)
        assert third == chat_body("m", ITEMS[:2], other, sampling, False) and third["tools"] is not first["tools"]
        with pytest.raises(ConversionError):
            client.request_body(ITEMS[:2], {"tools": [3]}, sampling)


def test_responses_body_passes_params_through_with_sampling_overrides():
    body = responses_body(
        "m",
        ITEMS[:2],
        {"input": "ignored", "tools": TOOLS, "temperature": 1.0, "stream": True},
        {"temperature": 0.2},
        False,
    )
    assert body == {"model": "m", "input": ITEMS[:2], "tools": TOOLS, "temperature": 0.2}


def test_parse_chat_keeps_reasoning_tool_calls_tokens_and_usage():
    call = parse_chat(
        {
            "id": "x",
            "created": 5,
            "prompt_token_ids": [1, 2],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3},
            "choices": [
                {
                    "finish_reason": "tool_calls",
                    "token_ids": [7, 8, 9],
                    "logprobs": {"content": [{"logprob": -0.1}, {"logprob": -0.2}, {"logprob": -0.3}]},
                    "message": {
                        "role": "assistant",
                        "content": "let me compute",
                        "reasoning_content": "hmm",
                        "tool_calls": [
                            {"id": "c9", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
                        ],
                    },
                }
            ],
        }
    )
    assert [i["type"] for i in call.output] == ["reasoning", "message", "function_call"]
    assert call.output[-1]["call_id"] == "c9" and call.output[-1]["generation_token_ids"] == [7, 8, 9]
    assert call.output[-1]["prompt_token_ids"] == [1, 2] and call.output[-1]["generation_log_probs"] == [
        -0.1,
        -0.2,
        -0.3,
    ]
    assert (call.input_tokens, call.output_tokens, call.finish_reason, call.created_at) == (2, 3, "tool_calls", 5)


def test_parse_responses_derives_finish_reason():
    out = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}]
    assert (
        parse_responses(
            {"output": out, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
        ).finish_reason
        == "length"
    )
    assert parse_responses({"output": out + [{"type": "function_call", "name": "f"}]}).finish_reason == "tool_calls"
    assert parse_responses({"output": out, "usage": {"input_tokens": 4, "output_tokens": 1}}).output_tokens == 1
    with pytest.raises(ResponseParseError):
        parse_responses({"nothing": True})


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(0)
    policy = RetryPolicy()
    delays = [policy.delay(a, rng) for a in range(12)]
    assert 0.25 <= delays[0] <= 0.5 and 2.0 <= delays[3] <= 4.0 and all(d <= 30.0 for d in delays)
    limited = httpx.Response(429, headers={"retry-after": "7"})
    assert policy.delay(0, rng, limited) == 7.0 and RetryPolicy(retry_after_cap_s=3).delay(0, rng, limited) == 3.0
    assert [s for s in (400, 404, 408, 409, 425, 429, 500, 503, 599) if policy.retryable(s)] == [
        408,
        409,
        425,
        429,
        500,
        503,
        599,
    ]


def client_with(responses: list, max_retries: int = 3) -> tuple[ModelClient, list]:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        item = responses[min(len(seen) - 1, len(responses) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = ModelClient(http, "http://model/v1", "m", "chat", max_retries=max_retries, rng=random.Random(0))
    return client, seen


OK = httpx.Response(
    200,
    json={
        "id": "a",
        "choices": [{"message": {"content": "42"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    },
)


async def test_retries_429_honouring_retry_after_then_5xx_then_succeeds(monkeypatch):
    sleeps = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)

    monkeypatch.setattr("rollouts.client.model.asyncio.sleep", fake_sleep)
    client, seen = client_with(
        [httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(503), httpx.ConnectError("refused"), OK]
    )
    call = await client.create([{"role": "user", "content": "q"}], {}, {"temperature": 0})
    assert call.attempts == 4 and len(seen) == 4
    assert sleeps[0] == 7.0 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0


async def test_gives_up_after_max_retries_with_a_typed_error(monkeypatch):
    async def no_sleep(_):
        return None

    monkeypatch.setattr("rollouts.client.model.asyncio.sleep", no_sleep)
    client, seen = client_with([httpx.Response(500, text="overloaded")], max_retries=2)
    with pytest.raises(ProviderError) as info:
        await client.create([{"role": "user", "content": "q"}], {}, {})
    assert info.value.status_code == 500 and info.value.attempts == 3 and len(seen) == 3


async def test_client_errors_are_not_retried():
    client, seen = client_with([httpx.Response(400, json={"error": {"message": "bad model"}})])
    with pytest.raises(ProviderError, match="HTTP 400.*bad model") as info:
        await client.create([{"role": "user", "content": "q"}], {}, {})
    assert info.value.retryable is False and len(seen) == 1


# llama-server's answer when its tool-call parser cannot read what the model wrote (tests/realmodel/
# test_llama_contract.py::test_an_unparseable_tool_reply_is_a_server_error pins it against the real server)
UNREADABLE_OUTPUT = {
    "error": {
        "code": 500,
        "type": "server_error",
        "message": "The model produced output that does not match the expected peg-native format",
    }
}


@pytest.mark.parametrize(
    ("status", "body", "fault"),
    [
        (500, json.dumps(UNREADABLE_OUTPUT), UNREADABLE_OUTPUT["error"]["message"]),
        (500, '{"message": "Failed to parse tool calls: bad JSON"}', "Failed to parse tool calls: bad JSON"),
        (400, "Error: failed to parse the model output", "Error: failed to parse the model output"),
        (500, '{"error": {"message": "CUDA out of memory"}}', None),  # the server's own fault: retried
        (503, "overloaded", None),
        (500, '{"error": "Model produced output"}', "Model produced output"),
        (200, json.dumps(UNREADABLE_OUTPUT), None),
        (500, "[1, 2]", None),
    ],
)
def test_an_error_saying_the_models_output_was_unreadable_is_recognised(status, body, fault):
    assert model_output_fault(status, body) == fault


async def test_a_reply_the_server_could_not_read_is_not_retried_and_is_typed():
    client, seen = client_with([httpx.Response(500, json=UNREADABLE_OUTPUT), OK])
    with pytest.raises(ModelOutputError, match="HTTP 500.*does not match the expected peg-native format") as info:
        await client.create([{"role": "user", "content": "q"}], {}, {"temperature": 0})
    assert len(seen) == 1  # the same request would generate the same text: no retry, no backoff
    assert info.value.as_record("generate") == {
        "type": "ModelOutputError",
        "message": info.value.message,
        "status_code": 500,
        "stage": "generate",
        "retryable": False,
        "attempts": 1,
    }


async def test_unreadable_success_bodies_are_retried_then_a_typed_parse_error(monkeypatch):
    async def no_sleep(_):
        return None

    monkeypatch.setattr("rollouts.client.model.asyncio.sleep", no_sleep)
    client, seen = client_with([httpx.Response(200, text="<html>"), OK])
    assert (await client.create([{"role": "user", "content": "q"}], {}, {})).attempts == 2 and len(seen) == 2
    for body in (
        "<html>",
        '{"choices": []}',
        '{"choices": null}',
        '{"choices": ["oops"]}',
        '{"id": "x"',
        '{"choices": [{"message": {"content": 5}}]}',
        '{"choices": [{"message": "hi"}]}',
        "[1]",
        '{"choices": [{"message": {"tool_calls": [{"function": null}]}}]}',
    ):
        client, seen = client_with([httpx.Response(200, text=body)], max_retries=2)
        with pytest.raises(ResponseParseError) as info:
            await client.create([{"role": "user", "content": "q"}], {}, {})
        assert (info.value.status_code, info.value.attempts, len(seen)) == (200, 3, 3), body
        assert info.value.as_record("generate")["type"] == "ResponseParseError"


async def test_api_key_from_the_named_environment_variable_is_sent_as_bearer(monkeypatch):
    from rollouts.config import CollectConfig
    from rollouts.errors import ConfigError

    config = CollectConfig(input="p.jsonl", model_url="http://x/v1", model="m", api_key_env="MY_KEY")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY"):
        config.api_key()
    monkeypatch.setenv("MY_KEY", "sk-test")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return OK

    from rollouts.client.model import http_client

    http = http_client(4, 10, EndpointAuth(api_key=config.api_key()), transport=httpx.MockTransport(handler))
    client = ModelClient(http, "http://model/v1", "m", "chat", max_retries=0)
    await client.create([{"role": "user", "content": "q"}], {}, {})
    await http.aclose()
    assert seen[0]["authorization"] == "Bearer sk-test" and seen[0]["content-type"] == "application/json"


async def test_a_plain_client_sends_straight_to_its_transport_with_its_headers_and_timeouts():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return OK

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"X-Team": "rl"}, timeout=7.5)
    client = ModelClient(http, "http://model/v1", "m", "chat", max_retries=0)
    assert client.transport is http._transport
    call = await client.create([{"role": "user", "content": "q"}], {}, {})
    assert call.output[-1]["content"][0]["text"] == "42"
    request = seen[0]
    assert request.headers["x-team"] == "rl" and request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(request.content)) and request.headers["host"] == "model"
    assert request.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}


async def test_a_client_with_event_hooks_or_auth_is_sent_through_as_a_client():
    hooked = []

    async def hook(response: httpx.Response) -> None:
        hooked.append(response.status_code)

    for http in (
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: OK), event_hooks={"response": [hook]}),
        httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda r: OK if r.headers.get("authorization", "").startswith("Basic") else httpx.Response(401)
            ),
            auth=("user", "pass"),
        ),
    ):
        client = ModelClient(http, "http://model/v1", "m", "chat", max_retries=0)
        assert client.transport is None
        assert (await client.create([{"role": "user", "content": "q"}], {}, {})).finish_reason == "stop"
    assert hooked == [200]

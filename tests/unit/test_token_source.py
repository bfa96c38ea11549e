"""--token-source: which server gave a call's ids, what each source asks for, and prompt ids from the server's own
tokenizer (llama.cpp's /apply-template + /tokenize, vLLM's chat /tokenize), against canned replies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from rollouts.client.model import ModelClient, probe_token_source
from rollouts.client.token_fields import SOURCE_REQUESTS, chat_token_fields, detect_source
from rollouts.config import CollectConfig
from rollouts.errors import ConfigError, TokenFieldsError

PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
PROMPT_IDS = [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]


def choice(**fields: Any) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": "Hello,"}, "finish_reason": "stop", **fields}


def llamacpp_reply(prompt_tokens: int = len(PROMPT_IDS)) -> dict[str, Any]:
    content = [
        {"id": 19556, "token": "Hello", "bytes": [72], "logprob": -2.5, "top_logprobs": []},
        {"id": 28, "token": ",", "bytes": [44], "logprob": -0.5, "top_logprobs": []},
    ]
    return {
        "id": "chatcmpl-1",
        "choices": [choice(logprobs={"content": content})],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2},
    }


@pytest.mark.parametrize(
    ("reply", "source"),
    [
        ({"prompt_token_ids": [1], "choices": [choice(token_ids=[2])]}, "vllm"),
        ({"choices": [choice(prompt_token_ids=[1], meta_info={"output_ids": [2]})]}, "sglang"),
        (llamacpp_reply(), "llamacpp"),
        ({"choices": [choice(logprobs={"content": [{"token": "token_id:7", "logprob": -1.0}]})]}, "tokenize"),
        ({"choices": [choice(logprobs={"content": [{"token": "Hello", "logprob": -1.0}]})]}, None),
        ({"choices": [choice()]}, None),
    ],
)
def test_the_source_is_read_from_where_the_reply_puts_its_ids(reply: dict[str, Any], source: str | None) -> None:
    assert detect_source(reply) == source


def test_llamacpp_logprob_ids_are_the_generation_ids() -> None:
    fields = chat_token_fields({**llamacpp_reply(), "prompt_token_ids": PROMPT_IDS}, asked=True)
    assert fields == {
        "prompt_token_ids": PROMPT_IDS,
        "generation_token_ids": [19556, 28],
        "generation_log_probs": [-2.5, -0.5],
    }


class FakeLlamaCpp:
    """llama-server's replies: ids only in logprobs (when asked with top_logprobs >= 1), the prompt by its
    /apply-template and /tokenize, at the server's root."""

    def __init__(self, prompt_tokens: int = len(PROMPT_IDS)) -> None:
        self.prompt_tokens = prompt_tokens
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((request.url.path, body))
        if request.url.path == "/v1/chat/completions":
            if not body.get("logprobs") or body.get("top_logprobs") == 0:
                return httpx.Response(200, json={"choices": [choice()], "usage": {"prompt_tokens": 10}})
            return httpx.Response(200, json=llamacpp_reply(self.prompt_tokens))
        if request.url.path == "/apply-template":
            assert body["messages"] and "max_tokens" in body  # the generation's own body: the same rendering
            return httpx.Response(200, json={"prompt": PROMPT})
        if request.url.path == "/tokenize":
            assert body == {"content": PROMPT, "add_special": False, "parse_special": True}
            return httpx.Response(200, json={"tokens": PROMPT_IDS})
        return httpx.Response(404, json={"error": "not found"})


def _calls(server: FakeLlamaCpp, source: str, count: int) -> tuple[ModelClient, list[dict[str, Any]]]:
    async def run() -> tuple[ModelClient, list[dict[str, Any]]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            client = ModelClient(
                http, "http://llama/v1", "m", "chat", max_retries=0, return_tokens=True, token_source=source
            )
            items = [{"role": "user", "content": "hi"}]
            calls = [await client.create(items, {}, {"max_output_tokens": 4}) for _ in range(count)]
            return client, [call.output[-1] for call in calls]

    return asyncio.run(run())


def test_auto_settles_on_llamacpp_once_and_then_asks_only_for_its_fields() -> None:
    server = FakeLlamaCpp()
    client, items = _calls(server, "auto", 3)
    assert client.resolved_source == "llamacpp"
    for item in items:
        assert item["prompt_token_ids"] == PROMPT_IDS and item["generation_token_ids"] == [19556, 28]
    chats = [body for path, body in server.requests if path == "/v1/chat/completions"]
    assert chats[0]["return_token_ids"] is True and chats[0]["top_logprobs"] == 1  # every server's names at first
    for body in chats[1:]:  # then llama.cpp's own only
        assert {k: body[k] for k in SOURCE_REQUESTS["llamacpp"]} == SOURCE_REQUESTS["llamacpp"]
        assert "return_token_ids" not in body
    assert [path for path, _ in server.requests].count("/apply-template") == 3


def test_a_prompt_count_other_than_the_generations_usage_fails_the_call() -> None:
    with pytest.raises(TokenFieldsError, match=r"usage.prompt_tokens is 11") as caught:
        _calls(FakeLlamaCpp(prompt_tokens=11), "llamacpp", 1)
    assert caught.value.retryable is False


def test_a_source_the_server_does_not_speak_fails_the_call_and_the_probe_in_one_line() -> None:
    with pytest.raises(TokenFieldsError, match="generation_token_ids"):
        _calls(FakeLlamaCpp(), "vllm", 1)  # top_logprobs 0: llama.cpp returns no logprobs at all


def test_the_responses_api_has_only_vllms_source() -> None:
    base = {"input": "p.jsonl", "out": "o", "model_url": "http://x/v1", "model": "m", "api": "responses"}
    with pytest.raises(ValueError, match="--token-source llamacpp needs --api chat"):
        CollectConfig(**base, token_source="llamacpp")
    assert CollectConfig(**base).endpoint.token_source == "auto"


def test_the_probe_names_the_source_and_the_option_when_no_ids_come(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeLlamaCpp()
    real = httpx.AsyncClient

    def mocked(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        return real(transport=httpx.MockTransport(server))

    monkeypatch.setattr("rollouts.client.model.http_client", mocked)
    assert probe_token_source("http://llama/v1", "m", "chat", "auto") == "llamacpp"
    with pytest.raises(ConfigError) as caught:
        probe_token_source("http://llama/v1", "m", "chat", "tokenize")
    message = str(caught.value)
    assert "\n" not in message and "--token-source" in message and "no exact source of token ids" in message

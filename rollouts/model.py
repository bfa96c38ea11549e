"""Model client: one call to an OpenAI-compatible endpoint (Chat Completions or Responses), with bounded retries.

Whatever the API, a call returns Responses-API output items, so everything downstream sees one shape.
This client is the single owner of request retries (429 with Retry-After, 5xx, connection errors, timeouts).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from rollouts.errors import ConfigError, ProviderError, ResponseParseError
from rollouts.process.formats import chat_tools
from rollouts.tokens.fields import chat_token_fields, responses_token_fields

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class ModelCall:
    """One model call, converted to Responses-API output items."""

    output: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    finish_reason: str
    response_id: str
    created_at: int
    attempts: int = 1
    latency_ms: float = 0.0
    raw_status: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)


def http_client(limit: int, timeout: float, api_key: str | None = None,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An AsyncClient over aiohttp (plain httpx's pool scans every connection per queued request, encode/httpx#3215).

    Create it inside the task that uses it: a client is bound to the event loop it first ran on.
    """
    from rollouts.envs.remote import cookie_free_transport  # per-rollout sessions of remote environments

    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    return httpx.AsyncClient(transport=transport or cookie_free_transport(limits), timeout=httpx.Timeout(timeout),
                             headers=headers)


def check_endpoint(base_url: str, api_key: str | None, timeout: float = 15.0) -> None:
    """Fail fast, before any prompt is sharded, when the model server is unreachable or refuses the key.

    `GET /models` is cheap on vLLM, SGLang and OpenAI; a server without it (404/405) is given the benefit of the doubt.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base_url}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the model server at {base_url} ({type(exc).__name__}: {exc}); "
                          "is it running, and is --model-url right (it usually ends in /v1)?") from exc
    if response.status_code in (401, 403):
        raise ConfigError(f"the model server at {base_url} refused the request (HTTP {response.status_code}): "
                          "check the key in --api-key-env")


# ----- request building -------------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def items_to_chat(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items -> Chat Completions messages (function calls become assistant tool_calls)."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" or "role" in item and kind not in ("function_call", "function_call_output"):
            role = item.get("role", "user")
            if role == "developer":
                role = "system"
            message: dict[str, Any] = {"role": role, "content": _text_of(item.get("content"))}
            for key in ("tool_calls", "tool_call_id", "name"):
                if key in item:
                    message[key] = item[key]
            messages.append(message)
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments", "{}")}}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else json.dumps(output)})
        # reasoning items are not sent back to chat endpoints
    return messages


def chat_body(model: str, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any], return_tokens: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": items_to_chat(items)}
    if params.get("tools"):
        body["tools"] = chat_tools(params["tools"])
        if "tool_choice" in params:
            body["tool_choice"] = params["tool_choice"]
        if "parallel_tool_calls" in params:
            body["parallel_tool_calls"] = params["parallel_tool_calls"]
    for key, value in sampling.items():
        body["max_tokens" if key == "max_output_tokens" else key] = value
    if return_tokens:
        body["logprobs"] = True
        body["return_token_ids"] = True
    return body


def responses_body(model: str, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any], return_tokens: bool) -> dict[str, Any]:
    body = {k: v for k, v in params.items() if k not in ("input", "model", "stream")}
    body.update(model=model, input=items, **sampling)
    if return_tokens:
        body["return_token_ids"] = True
    return body


# ----- response parsing -------------------------------------------------------------------------------------------


def parse_chat(data: dict[str, Any], return_tokens: bool = False) -> ModelCall:
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise ResponseParseError(f"chat completion without choices[0]: {str(data)[:200]}") from exc
    rid = str(data.get("id") or "chatcmpl")
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        output.append({"type": "reasoning", "id": f"rs_{rid}", "summary": [{"type": "summary_text", "text": reasoning}]})
    content = message.get("content")
    if content:
        output.append({"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": content, "annotations": []}]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append({"type": "function_call", "id": f"fc_{call.get('id')}", "call_id": call.get("id"),
                       "name": fn.get("name"), "arguments": fn.get("arguments") or "{}", "status": "completed"})
    if not output:
        output.append({"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": "", "annotations": []}]})
    output[-1].update(chat_token_fields(data, asked=return_tokens))
    usage = data.get("usage") or {}
    return ModelCall(output=output, input_tokens=int(usage.get("prompt_tokens") or 0),
                     output_tokens=int(usage.get("completion_tokens") or 0),
                     finish_reason=choice.get("finish_reason") or "stop", response_id=rid,
                     created_at=int(data.get("created") or time.time()))


def parse_responses(data: dict[str, Any], return_tokens: bool = False) -> ModelCall:
    output = data.get("output")
    if not isinstance(output, list):
        raise ResponseParseError(f"Responses API reply without an `output` list: {str(data)[:200]}")
    responses_token_fields(output, asked=return_tokens)
    usage = data.get("usage") or {}
    status = data.get("status") or "completed"
    reason = ((data.get("incomplete_details") or {}).get("reason") or "") if status == "incomplete" else ""
    if reason == "max_output_tokens":
        finish = "length"
    elif any(item.get("type") == "function_call" for item in output):
        finish = "tool_calls"
    else:
        finish = reason or "stop"
    return ModelCall(output=output, input_tokens=int(usage.get("input_tokens") or 0),
                     output_tokens=int(usage.get("output_tokens") or 0), finish_reason=finish,
                     response_id=str(data.get("id") or "resp"), created_at=int(data.get("created_at") or time.time()),
                     raw_status=status)


# ----- the call with retries ---------------------------------------------------------------------------------------


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP_S)
    except ValueError:
        return None


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = base * 2**attempt, capped."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2**attempt))
    return delay * (0.5 + rng.random() / 2)


class ModelClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, model: str, api: str, *, max_retries: int,
                 return_tokens: bool = False, rng: random.Random | None = None) -> None:
        self.http, self.model, self.api = http, model, api
        # Parsed once: httpx re-parses a str URL on every request (~20% of its per-request CPU here).
        self.url = httpx.URL(f"{base_url}/chat/completions" if api == "chat" else f"{base_url}/responses")
        self.max_retries = max_retries
        # The client's own headers carry the content type; only a client built elsewhere needs it per request.
        self.headers = None if http.headers.get("content-type") == "application/json" else JSON_HEADERS
        self.return_tokens = return_tokens
        self.rng = rng or random.Random()

    async def create(self, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any]) -> ModelCall:
        build = chat_body if self.api == "chat" else responses_body
        # Encoded once for every attempt; compact separators, no httpx re-encoding per try.
        body = orjson.dumps(build(self.model, items, params, sampling, self.return_tokens))
        attempt = 0
        started = time.perf_counter()
        while True:
            try:
                response = await self.http.post(self.url, content=body, headers=self.headers)
            except httpx.TimeoutException as exc:
                error = ProviderError(f"request timed out ({type(exc).__name__}) after retries", status_code=None, retryable=True)
                delay = None
            except httpx.TransportError as exc:
                error = ProviderError(f"connection error: {type(exc).__name__}: {exc}", status_code=None, retryable=True)
                delay = None
            else:
                if response.status_code < 300:
                    return self._parse(response, attempt + 1, started)
                retryable = response.status_code in RETRYABLE_STATUS or response.status_code >= 500
                error = ProviderError(f"HTTP {response.status_code} from {self.url}: {response.text[:300]}",
                                      status_code=response.status_code, retryable=retryable)
                delay = _retry_after(response)
                if not retryable:
                    raise error.add(attempts=attempt + 1)
            if attempt >= self.max_retries:
                raise error.add(attempts=attempt + 1)
            await asyncio.sleep(delay if delay is not None else backoff_delay(attempt, self.rng))
            attempt += 1

    def _parse(self, response: httpx.Response, attempts: int, started: float) -> ModelCall:
        try:
            data = orjson.loads(response.content)
        except ValueError as exc:
            raise ResponseParseError(f"endpoint returned non-JSON body: {response.text[:200]!r}", status_code=response.status_code, attempts=attempts) from exc
        if not isinstance(data, dict):
            raise ResponseParseError(f"endpoint returned {type(data).__name__}, expected an object", status_code=response.status_code, attempts=attempts)
        parse = parse_chat if self.api == "chat" else parse_responses
        try:
            call = parse(data, return_tokens=self.return_tokens)
        except ResponseParseError as exc:
            raise exc.add(status_code=response.status_code, attempts=attempts) from None
        call.attempts = attempts
        call.latency_ms = (time.perf_counter() - started) * 1000
        return call

"""Model client: one call to an OpenAI-compatible endpoint (Chat Completions or Responses), with bounded retries.

Whatever the API, a call returns Responses-API output items, so everything downstream sees one shape.
This client is the single owner of request retries (429 with Retry-After, 5xx, connection errors, timeouts).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from rollouts.errors import ConfigError, ProviderError, ResponseParseError
from rollouts.chat import chat_tools, items_to_chat
from rollouts.retry import RetryPolicy

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
    cached_tokens: int = 0
    reasoning_tokens: int = 0


def http_client(limit: int, timeout: float, api_key: str | None = None,
                transport: httpx.AsyncBaseTransport | None = None,
                headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An AsyncClient over aiohttp (plain httpx's pool scans every connection per queued request, encode/httpx#3215),
    without a cookie jar or per-request URL and header merging (rollouts/transport.py has the measurements).

    Create it inside the task that uses it: a client is bound to the event loop it first ran on.
    """
    from rollouts.envs.remote import cookie_free_transport  # per-rollout sessions of remote environments
    from rollouts.transport import CollectorHTTPClient

    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    sent = {"Content-Type": "application/json", **(headers or {}),
            **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    return CollectorHTTPClient(transport=transport or cookie_free_transport(limits), timeout=httpx.Timeout(timeout),
                               headers=sent)


def check_endpoint(base_url: str, api_key: str | None, timeout: float = 5.0,
                   headers: dict[str, str] | None = None) -> None:
    """Fail fast, before any prompt is sharded, when the model server is unreachable, refuses the key, or the URL
    is not an OpenAI-compatible base (`GET /models` answers on vLLM, SGLang and OpenAI; a 404 there means the path
    is wrong, usually a missing `/v1`)."""
    sent = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    try:
        response = httpx.get(f"{base_url}/models", headers=sent, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the model server at {base_url} ({type(exc).__name__}): is it running, and "
                          "is --model-url right (it usually ends in /v1)?") from exc
    if response.status_code in (401, 403):
        raise ConfigError(f"the model server at {base_url} refused the request (HTTP {response.status_code}): "
                          "check the key in --api-key-env")
    if response.status_code == 404:
        hint = f"; did you mean {base_url}/v1?" if not base_url.rstrip("/").endswith("/v1") else ""
        raise ConfigError(f"{base_url}/models answered 404: --model-url is not an OpenAI-compatible base URL{hint}")


# ----- request building -------------------------------------------------------------------------------------------


def chat_body(model: str, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any], return_tokens: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": items_to_chat(items, params.get("instructions"))}
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


def parse_chat(data: dict[str, Any]) -> ModelCall:
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
    token_fields: dict[str, Any] = {}
    if "prompt_token_ids" in data:
        token_fields["prompt_token_ids"] = data["prompt_token_ids"]
    if "token_ids" in choice:
        token_fields["generation_token_ids"] = choice["token_ids"]
    logprobs = (choice.get("logprobs") or {}).get("content")
    if logprobs:
        token_fields["generation_log_probs"] = [entry.get("logprob") for entry in logprobs]
    output[-1].update(token_fields)
    usage = data.get("usage") or {}
    return ModelCall(output=output, input_tokens=int(usage.get("prompt_tokens") or 0),
                     output_tokens=int(usage.get("completion_tokens") or 0),
                     finish_reason=choice.get("finish_reason") or "stop", response_id=rid,
                     created_at=int(data.get("created") or time.time()),
                     cached_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
                     reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"))


def _detail(usage: dict[str, Any], group: str, key: str) -> int:
    details = usage.get(group)
    value = details.get(key) if isinstance(details, dict) else None
    return value if isinstance(value, int) else 0


def parse_responses(data: dict[str, Any]) -> ModelCall:
    output = data.get("output")
    if not isinstance(output, list):
        raise ResponseParseError(f"Responses API reply without an `output` list: {str(data)[:200]}")
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
                     cached_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
                     reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"))


# ----- the call with retries ---------------------------------------------------------------------------------------


class ModelClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, model: str, api: str, *, max_retries: int,
                 return_tokens: bool = False, rng: random.Random | None = None) -> None:
        self.http, self.model, self.api = http, model, api
        # Parsed once: httpx re-parses a str URL on every request (~20% of its per-request CPU here).
        self.url = httpx.URL(f"{base_url}/chat/completions" if api == "chat" else f"{base_url}/responses")
        self.retry = RetryPolicy(max_retries=max_retries)
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
                answered = None
            except httpx.TransportError as exc:
                error = ProviderError(f"connection error: {type(exc).__name__}: {exc}", status_code=None, retryable=True)
                answered = None
            else:
                if response.status_code < 300:
                    return self._parse(response, attempt + 1, started)
                retryable = self.retry.retryable(response.status_code)
                error = ProviderError(f"HTTP {response.status_code} from {self.url}: {response.text[:300]}",
                                      status_code=response.status_code, retryable=retryable)
                answered = response
                if not retryable:
                    raise error.add(attempts=attempt + 1)
            if attempt >= self.retry.max_retries:
                raise error.add(attempts=attempt + 1)
            await asyncio.sleep(self.retry.delay(attempt, self.rng, answered))
            attempt += 1

    def _parse(self, response: httpx.Response, attempts: int, started: float) -> ModelCall:
        try:
            data = orjson.loads(response.content)
        except ValueError as exc:
            raise ResponseParseError(f"endpoint returned non-JSON body: {response.text[:200]!r}", status_code=response.status_code, attempts=attempts) from exc
        if not isinstance(data, dict):
            raise ResponseParseError(f"endpoint returned {type(data).__name__}, expected an object", status_code=response.status_code, attempts=attempts)
        call = parse_chat(data) if self.api == "chat" else parse_responses(data)
        call.attempts = attempts
        call.latency_ms = (time.perf_counter() - started) * 1000
        return call

"""Model client: one call to an OpenAI-compatible endpoint (Chat Completions or Responses), with bounded retries.

Whatever the API, a call returns Responses-API output items, so everything downstream sees one shape.
This client is the single owner of request retries: 429 with Retry-After, 5xx, connection errors, timeouts, and 2xx
bodies it cannot read (HTML pages, truncated or malformed JSON, missing or empty `choices`), which are as transient
as a 5xx from a proxy or a restarting server. Each attempt has one deadline from connect to last byte, and its body
is read up to `max_response_bytes` only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from rollouts.client import DEFAULT_REPLY_MEMORY_BYTES
from rollouts.client.bodies import ReplyBudget, read_capped, reply_budget
from rollouts.client.chat import chat_tools, items_to_chat
from rollouts.client.credentials import NO_AUTH, EndpointAuth
from rollouts.client.replies import check_chat, check_responses
from rollouts.client.retry import RetryPolicy, model_output_fault, retry_after, transport_failure
from rollouts.client.tls import tls_context
from rollouts.client.token_fields import (
    CHAT_TOKEN_REQUEST,
    NO_SOURCE_HINT,
    PROMPT_ROUTES,
    SOURCE_REQUESTS,
    TOKEN_FIELDS,
    chat_token_fields,
    check_prompt_count,
    detect_source,
    has_prompt_ids,
    llamacpp_tokenize_body,
    rendered_prompt,
    responses_token_fields,
    server_root,
    tokenize_ids,
    tokenize_request,
)
from rollouts.client.transport import CollectorHTTPClient, CollectorTransport, cookie_free_transport
from rollouts.errors import (
    ConfigError,
    ModelOutputError,
    ProviderError,
    ProviderTimeout,
    ResponseParseError,
    TokenFieldsError,
)
from rollouts.redact import header_secrets, scrub

JSON_HEADERS = {"Content-Type": "application/json"}
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_ERROR_BODY_BYTES = 64 * 1024  # what an error reply contributes to the failure's message


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


def http_client(
    limit: int,
    timeout: float,
    auth: EndpointAuth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient over aiohttp (plain httpx's pool scans every connection per queued request, encode/httpx#3215),
    without a cookie jar or per-request URL and header merging (rollouts/client/transport.py has the measurements).

    Create it inside the task that uses it: a client is bound to the event loop it first ran on.
    """
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    sent = {"Content-Type": "application/json", **(auth or NO_AUTH).request_headers()}
    return CollectorHTTPClient(
        transport=transport or cookie_free_transport(limits), timeout=httpx.Timeout(timeout), headers=sent
    )


def check_endpoint(
    base_url: str, auth: EndpointAuth | None = None, timeout: float = 5.0, *, model: str | None = None
) -> None:
    """Fail fast, before any prompt is sharded, when the model server is unreachable, refuses the key, or the URL
    is not an OpenAI-compatible base (`GET /models` answers on vLLM, SGLang and OpenAI; a 404 there means the path
    is wrong, usually a missing `/v1`)."""
    try:
        response = httpx.get(
            f"{base_url}/models", headers=(auth or NO_AUTH).request_headers(), timeout=timeout, verify=tls_context()
        )
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"cannot reach the model server at {base_url} ({type(exc).__name__}): is it running, and "
            "is --model-url right (it usually ends in /v1)?"
        ) from exc
    if response.status_code in (401, 403):
        raise ConfigError(
            f"the model server at {base_url} refused the request (HTTP {response.status_code}): "
            "check the key in --api-key-env"
        )
    if response.status_code == 404:
        hint = f"; did you mean {base_url}/v1?" if not base_url.rstrip("/").endswith("/v1") else ""
        raise ConfigError(f"{base_url}/models answered 404: --model-url is not an OpenAI-compatible base URL{hint}")
    if model is not None and response.status_code == 200:
        served = served_models(response)
        if served and model not in served:
            listed = ", ".join(served[:10]) + (f" and {len(served) - 10} more" if len(served) > 10 else "")
            raise ConfigError(
                f"--model {model!r} is not served by {base_url} (it serves {listed}); "
                "pass --no-model-check for a gateway whose model list is incomplete"
            )


def probe_token_source(
    base_url: str,
    model: str,
    api: str,
    token_source: str,
    auth: EndpointAuth | None = None,
    timeout: float = 60.0,
) -> str:
    """Fail fast for --return-tokens, before any prompt is sharded: one tiny request (a few tokens) asking for token
    ids as the run's calls will. Returns the source that answered (`auto` resolved); a one-line ConfigError when the
    server gives no exact ids that way (a hosted API, a server whose replies carry none), instead of a run whose
    every rollout fails with TokenFieldsError."""

    async def probe() -> str:
        async with http_client(1, timeout, auth) as http:
            client = ModelClient(
                http,
                base_url,
                model,
                api,
                max_retries=1,
                return_tokens=True,
                token_source=token_source,
                request_timeout=timeout,
            )
            sampling = {"max_output_tokens": 8 if api == "chat" else 16, "temperature": 0.0}
            await client.create([{"role": "user", "content": "Say hello."}], {}, sampling)
            return client.resolved_source or token_source

    try:
        return asyncio.run(probe())
    except TokenFieldsError as exc:
        if exc.missing:
            detail = f"its reply to a probe request has no {', '.join(exc.missing)}"
        else:
            detail = f"a probe request's token ids are unusable: {_one_line(str(exc).split('; ')[0])}"
    except ProviderError as exc:
        detail = f"a probe request asking for token ids failed: {_one_line(str(exc))}"
    raise ConfigError(
        f"--return-tokens: no exact source of token ids at {base_url} ({detail}); vLLM, SGLang and llama.cpp's "
        f"llama-server return them, hosted APIs do not. --token-source vllm|sglang|llamacpp|tokenize names the "
        f"source (now {token_source})"
    )


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def served_models(response: httpx.Response) -> list[str]:
    """Model ids an OpenAI-compatible `GET /models` lists (`{"data": [{"id": ...}]}`); empty when it lists none."""
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return []
    if not isinstance(data, list):
        return []
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id") is not None]


# ----- request building -------------------------------------------------------------------------------------------


def chat_body(
    model: str,
    items: list[dict[str, Any]],
    params: dict[str, Any],
    sampling: dict[str, Any],
    return_tokens: bool,
    token_request: dict[str, Any] | None = None,
    converted_tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Chat Completions body; `converted_tools` is `chat_tools(params["tools"])` when the caller has it."""
    body: dict[str, Any] = {"model": model, "messages": items_to_chat(items, params.get("instructions"))}
    if params.get("tools"):
        body["tools"] = converted_tools if converted_tools is not None else chat_tools(params["tools"])
        if "tool_choice" in params:
            body["tool_choice"] = params["tool_choice"]
        if "parallel_tool_calls" in params:
            body["parallel_tool_calls"] = params["parallel_tool_calls"]
    for key, value in sampling.items():
        body["max_tokens" if key == "max_output_tokens" else key] = value
    if return_tokens:  # the token source's fields (SOURCE_REQUESTS); every server's names by default
        body.update(CHAT_TOKEN_REQUEST if token_request is None else token_request)
    return body


def responses_body(
    model: str,
    items: list[dict[str, Any]],
    params: dict[str, Any],
    sampling: dict[str, Any],
    return_tokens: bool,
    token_request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = {k: v for k, v in params.items() if k not in ("input", "model", "stream")}
    body.update(model=model, input=items, **sampling)
    if return_tokens:
        body["return_token_ids"] = True
    return body


# ----- response parsing -------------------------------------------------------------------------------------------


def parse_chat(data: dict[str, Any], return_tokens: bool = False) -> ModelCall:
    check_chat(data)
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise ResponseParseError(f"chat completion without choices[0]: {str(data)[:200]}") from exc
    rid = str(data.get("id") or "chatcmpl")
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        output.append(
            {"type": "reasoning", "id": f"rs_{rid}", "summary": [{"type": "summary_text", "text": reasoning}]}
        )
    content = message.get("content")
    if content:
        output.append(
            {
                "type": "message",
                "id": f"msg_{rid}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": content, "annotations": []}],
            }
        )
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{call.get('id')}",
                "call_id": call.get("id"),
                "name": fn.get("name"),
                "arguments": fn.get("arguments") or "{}",
                "status": "completed",
            }
        )
    if not output:
        output.append(
            {
                "type": "message",
                "id": f"msg_{rid}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "", "annotations": []}],
            }
        )
    output[-1].update(chat_token_fields(data, asked=return_tokens))
    usage = data.get("usage") or {}
    return ModelCall(
        output=output,
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason") or "stop",
        response_id=rid,
        created_at=int(data.get("created") or time.time()),
        cached_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def _detail(usage: dict[str, Any], group: str, key: str) -> int:
    details = usage.get(group)
    value = details.get(key) if isinstance(details, dict) else None
    return value if isinstance(value, int) else 0


def parse_responses(data: dict[str, Any], return_tokens: bool = False) -> ModelCall:
    check_responses(data)
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
    return ModelCall(
        output=output,
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        finish_reason=finish,
        response_id=str(data.get("id") or "resp"),
        created_at=int(data.get("created_at") or time.time()),
        cached_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
    )


def _direct_timeouts(timeouts: dict[str, Any], request_timeout: float | None) -> dict[str, Any]:
    """The client's timeouts for a model call, without a read timeout the call's own deadline makes redundant.

    Each attempt runs under `request_timeout`, from before it asks for a connection to the body's last byte, so a
    read timeout at least as long can never fire first; aiohttp would still arm it as each request is written and
    re-arm it on every chunk read (two timer handles per call, ~2 % of a tool rollout's CPU)."""
    read = timeouts.get("read")
    if request_timeout is not None and read is not None and read >= request_timeout:
        return {**timeouts, "read": None}
    return timeouts


# ----- the call with retries ---------------------------------------------------------------------------------------


class ModelClient:
    """Calls one endpoint; `request_timeout` is each attempt's deadline from connect to the body's last byte (httpx's
    own timeouts bound each read, so a server trickling bytes would otherwise hold a request for ever)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        model: str,
        api: str,
        *,
        max_retries: int,
        return_tokens: bool = False,
        token_source: str = "auto",
        rng: random.Random | None = None,
        request_timeout: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        reply_memory_bytes: int = DEFAULT_REPLY_MEMORY_BYTES,
        secrets: Iterable[str] = (),
    ) -> None:
        self.http, self.model, self.api = http, model, api
        self.base_url = base_url
        # Parsed once: httpx re-parses a str URL on every request (~20% of its per-request CPU here).
        self.url = httpx.URL(f"{base_url}/chat/completions" if api == "chat" else f"{base_url}/responses")
        self.retry = RetryPolicy(max_retries=max_retries)
        # A model request goes straight to the client's transport for its URL, with the client's headers and
        # timeouts merged once here: `AsyncClient.send` adds, per request, an auth flow, a redirect loop, event
        # hooks, a cookie merge and a log record, none of which a model call uses (no redirects are followed, the
        # key is a header). bench/http_stack.py, 256 in flight: 404 -> 340 us of CPU per call (bare aiohttp: 200).
        # A client given auth, event hooks or redirects to follow is sent through as a client, so they apply.
        self.headers = httpx.Headers(http.headers)
        if self.headers.get("content-type") != "application/json":
            self.headers.update(JSON_HEADERS)
        hooks = http.event_hooks
        plain = http.auth is None and not http.follow_redirects and not hooks["request"] and not hooks["response"]
        self.transport = http._transport_for_url(self.url) if plain else None
        self.extensions = {"timeout": http.timeout.as_dict()}
        # The collector's own transport takes the call without an httpx.Request at all (see CollectorTransport.post).
        transport = self.transport
        self.direct = transport if isinstance(transport, CollectorTransport) and transport.direct else None
        if self.direct is not None:
            self._target = self.direct.target(self.url, _direct_timeouts(self.extensions["timeout"], request_timeout))
            self._header_items = self.headers.multi_items()
        # A server may echo the request (its headers, the key) in an error body: masked before any message holds it.
        self.secrets = [*header_secrets(self.headers.multi_items()), *secrets]
        self.return_tokens = return_tokens
        # Where token ids come from (`--token-source`); `auto` is settled by the first reply that carries ids.
        self._use_source("vllm" if api == "responses" else token_source)
        self.rng = rng or random.Random()
        self.request_timeout = request_timeout
        self.max_response_bytes = max_response_bytes
        self.reply_memory_bytes = reply_memory_bytes
        self._reply_budget: ReplyBudget | None = None
        self._converted_tools: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {}

    def _budget(self) -> ReplyBudget:
        """The collector loop's reply budget, set to this run's `--max-reply-memory-bytes` (found once)."""
        if self._reply_budget is None:
            self._reply_budget = reply_budget(self.reply_memory_bytes)
        return self._reply_budget

    def _use_source(self, source: str) -> None:
        self.token_source = source
        self.token_request = SOURCE_REQUESTS.get(source) if self.api == "chat" else None
        # The replies that need more than parsing: `auto` (which source?) and sources without prompt ids.
        self.token_hook = self.return_tokens and self.api == "chat" and (source == "auto" or source in PROMPT_ROUTES)

    @property
    def resolved_source(self) -> str | None:
        """The token source in use, None while `auto` has seen no reply (or without --return-tokens)."""
        return self.token_source if self.return_tokens and self.token_source != "auto" else None

    def request_body(
        self, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any]
    ) -> dict[str, Any]:
        """The request body of one call, exactly as `create` sends it (batch mode writes it to a batch file)."""
        if self.api != "chat":
            return responses_body(self.model, items, params, sampling, self.return_tokens, self.token_request)
        tools = params.get("tools")
        converted = self._chat_tools(tools) if tools and isinstance(tools, list) else None
        return chat_body(self.model, items, params, sampling, self.return_tokens, self.token_request, converted)

    def _chat_tools(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """`chat_tools(tools)`, converted once per tools list: a rollout's every call sends the same list (and an
        environment's tools are one list for all its rollouts). The list is held beside its conversion, so its id
        cannot be reused while cached."""
        found = self._converted_tools.get(id(tools))
        if found is not None and found[0] is tools:
            return found[1]
        if len(self._converted_tools) >= 4096:
            self._converted_tools.clear()
        converted = chat_tools(tools)
        self._converted_tools[id(tools)] = (tools, converted)
        return converted

    def parse_reply(self, data: dict[str, Any], status: int = 200) -> ModelCall:
        """A reply body that came another way than `create` (a batch's output file), read as `create` reads its
        replies: the same checks, token fields and typed errors. `auto` settles on the source the reply shows."""
        if self.return_tokens and self.api == "chat" and self.token_source == "auto":
            detected = detect_source(data) if isinstance(data, dict) else None
            if detected is not None:
                self._use_source(detected)
        return self._parse_data(data, status)

    async def create(self, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any]) -> ModelCall:
        request = self.request_body(items, params, sampling)
        # Encoded once for every attempt; compact separators, no httpx re-encoding per try.
        body = orjson.dumps(request)
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                call = await self._attempt(body, request)
            except ProviderError as error:
                error.add(attempts=attempt + 1)
                if not error.is_retryable or attempt >= self.retry.max_retries:
                    raise
                await asyncio.sleep(self.retry.delay(attempt, self.rng, retry_after_s=error.retry_after_s))
                attempt += 1
                continue
            call.attempts = attempt + 1
            call.latency_ms = (time.perf_counter() - started) * 1000
            return call

    async def _attempt(self, body: bytes, sent: dict[str, Any]) -> ModelCall:
        try:
            async with asyncio.timeout(self.request_timeout):
                reply: httpx.Response | tuple[int, bytes]
                if self.direct is not None:
                    # A 2xx body read whole within --max-response-bytes comes back as (status, body).
                    reply = await self.direct.post(self._target, self._header_items, body, self.max_response_bytes)
                else:
                    request = httpx.Request(
                        "POST", self.url, headers=self.headers, content=body, extensions=self.extensions
                    )
                    if self.transport is not None:
                        reply = await self.transport.handle_async_request(request)
                    else:
                        reply = await self.http.send(request, stream=True)
                status, content = reply if isinstance(reply, tuple) else await self._read(reply)
        except TimeoutError:
            raise ProviderTimeout(
                f"no complete reply from {self.url} within the {self.request_timeout:g} s request "
                "deadline (--request-timeout)",
                status_code=None,
                retryable=True,
            ) from None
        except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:  # aiohttp's own when its mapping misses one
            failure = transport_failure(exc)
            kind = ProviderTimeout if failure.timeout else ProviderError
            raise kind(f"{failure.label} ({self.url})", status_code=None, retryable=True) from exc
        if self.token_hook:
            return await self._parse_tokens(content, status, sent)
        return self._parse(content, status)

    async def _read(self, response: httpx.Response) -> tuple[int, bytes]:
        """(status, body) of a 2xx reply read under --max-response-bytes; an error reply raises its typed error."""
        try:
            status = response.status_code
            if status >= 300:
                text = (await read_capped(response, _ERROR_BODY_BYTES, truncate=True)).decode("utf-8", "replace")
                fault = model_output_fault(status, text)
                raise (ModelOutputError if fault else ProviderError)(
                    f"HTTP {status} from {self.url}: {scrub(text, self.secrets)[:300]}",
                    status_code=status,
                    retryable=False if fault else self.retry.retryable(status),
                    retry_after_s=retry_after(response),
                )
            return status, await read_capped(response, self.max_response_bytes, budget=self._budget())
        finally:
            await response.aclose()

    async def _parse_tokens(self, content: bytes, status: int, request: dict[str, Any]) -> ModelCall:
        """A chat reply with token ids: `auto` picks the source from it, and a source that sends no prompt ids gets
        them from the server's own tokenization of the exact rendered prompt, checked against its usage."""
        data = self._load(content, status)
        try:
            check_chat(data)
            source = self.token_source
            detected = detect_source(data)  # before any tokenizer request: a reply without ids needs none
            if detected is None:
                raise TokenFieldsError(
                    f"chat completion: token fields were asked for but the reply carries none; {NO_SOURCE_HINT}",
                    missing=list(TOKEN_FIELDS),
                )
            if source == "auto":
                self._use_source(detected)  # once: later calls ask for this source's fields only
                source = detected
            route = PROMPT_ROUTES.get(source)
            if route is not None and not has_prompt_ids(data):
                ids = await self._prompt_ids(route, request)
                check_prompt_count(ids, data)
                data["prompt_token_ids"] = ids
        except TokenFieldsError as exc:
            raise exc.add(status_code=status, retryable=False) from None
        except ResponseParseError as exc:
            raise exc.add(status_code=status, retryable=True) from None
        return self._parse_data(data, status)

    async def _prompt_ids(self, route: str, request: dict[str, Any]) -> list[int]:
        """The prompt ids of `request` by the server's own tokenizer: llama.cpp's `/apply-template` (the same body
        the generation parsed, so the same rendering) then `/tokenize`, or vLLM's chat `/tokenize`."""
        if route == "apply-template":
            root = server_root(self.base_url)
            prompt = rendered_prompt(await self._post_json(f"{root}/apply-template", request))
            return tokenize_ids(await self._post_json(f"{root}/tokenize", llamacpp_tokenize_body(prompt)))
        url, body = tokenize_request(self.base_url, request)
        return tokenize_ids(await self._post_json(url, body))

    async def _post_json(self, url: str, payload: dict[str, Any]) -> Any:
        """One request to the server's tokenizer; its failures are the call's (the call's retries cover them)."""
        try:
            async with asyncio.timeout(self.request_timeout):
                response = await self.http.post(url, content=orjson.dumps(payload), headers=JSON_HEADERS)
        except TimeoutError:
            raise ProviderTimeout(
                f"no reply from {url} within the {self.request_timeout:g} s request deadline",
                status_code=None,
                retryable=True,
            ) from None
        except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:
            failure = transport_failure(exc)
            kind = ProviderTimeout if failure.timeout else ProviderError
            raise kind(f"{failure.label} ({url})", status_code=None, retryable=True) from exc
        status = response.status_code
        if status >= 300:
            raise ProviderError(
                f"HTTP {status} from {url}: {scrub(response.text, self.secrets)[:300]}",
                status_code=status,
                retryable=self.retry.retryable(status),
                retry_after_s=retry_after(response),
            )
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ResponseParseError(f"HTTP {status} from {url} with a body that is not JSON", retryable=True) from None

    def _parse(self, content: bytes, status: int) -> ModelCall:
        return self._parse_data(self._load(content, status), status)

    def _load(self, content: bytes, status: int) -> dict[str, Any]:
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            snippet = scrub(content[:4096].decode("utf-8", "replace"), self.secrets)[:200]
            raise ResponseParseError(
                f"HTTP {status} with a body that is not JSON ({len(content)} bytes): {snippet!r}",
                status_code=status,
                retryable=True,
            ) from None
        if not isinstance(data, dict):
            raise ResponseParseError(
                f"HTTP {status} with a JSON {type(data).__name__}, expected an object",
                status_code=status,
                retryable=True,
            )
        return data

    def _parse_data(self, data: dict[str, Any], status: int) -> ModelCall:
        try:
            if self.api == "chat":
                return parse_chat(data, return_tokens=self.return_tokens)
            return parse_responses(data, return_tokens=self.return_tokens)
        except TokenFieldsError as exc:  # the server does not return token ids: asking again will not change that
            raise exc.add(status_code=status, retryable=False) from None
        except ResponseParseError as exc:
            raise exc.add(status_code=status, retryable=True) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # a shape the checks let through
            raise ResponseParseError(
                f"HTTP {status} with a reply of unexpected shape ({type(exc).__name__}: {exc})",
                status_code=status,
                retryable=True,
            ) from exc

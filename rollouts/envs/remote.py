"""A remote environment: a NeMo Gym resources server (`/seed_session`, `/verify`, one POST route per tool) over HTTP.

Protocol, as NeMo Gym's own agents speak it:
  * `POST {url}/seed_session` with the input row as JSON; the server answers with a session cookie (Set-Cookie).
  * `POST {url}/{tool}` with the tool call's parsed JSON arguments; the reply body (any status) is the tool output.
  * `POST {url}/verify` with the row plus `response`, a complete Responses-API object; the reply is the request
    echoed plus `reward` and any extra fields.
Both bodies are what NeMo Gym's request models accept (`gym_row`): its `NeMoGymResponseCreateParamsNonStreaming`
forbids unknown keys (a real server answers 422 `extra_forbidden` for `seed`), function tools need `strict` and
`parameters`, and `response.usage` needs `input_tokens_details` / `output_tokens_details`. The collector's own
bookkeeping (`rollout_id`, `status`, `timings`, `sampling`...) is not sent.
The session cookies are kept per rollout in a `SessionState` and sent explicitly on every call; servers may
re-issue them on any reply and the latest value wins. The shared `httpx.AsyncClient`'s cookie jar is never used:
it would mix sessions of concurrent rollouts. (With the aiohttp transport the aiohttp session has a jar of its own
that overrides explicit cookies: build it with `cookie_free_transport()`, or a `DummyCookieJar`.)

Extras: the reply's fields minus `responses_create_params`, `response`, `reward` and every key whose value equals
what we sent (the echoed row). So a server that adds `judge` or `extracted_answer`, or changes a metadata field, has
those stored; the echo is not duplicated. A verifier field named like one of the collector's own keys
(`rollouts.records.RESERVED_KEYS`: NeMo Gym verifiers write `status: "pass"`...) is kept under `verifier`
(`{"verifier": {"status": "pass"}}`), never over the collector's.

Retries: up to `attempts` tries under the collector's one `rollouts.client.retry.RetryPolicy` (backoff with jitter on
connection errors, timeouts, 408/409/425/429 and 5xx, `Retry-After` honoured up to `max_backoff`); any other 4xx fails
at once with a `VerifierError` carrying `status_code` and the server's body (a 422 body says which field is missing).
Tool calls retry only when the request could not be sent at all: a tool may have side effects, and an error reply
is a valid tool output for the model, as in NeMo Gym.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import time
import uuid
from http.cookies import CookieError, SimpleCookie
from typing import Any

import httpx

from rollouts.client import DEFAULT_REPLY_MEMORY_BYTES
from rollouts.client.bodies import read_capped, reply_budget
from rollouts.client.retry import RetryPolicy, transport_failure
from rollouts.envs.base import Environment, SessionState, VerifyResult
from rollouts.errors import ConfigError, ResponseTooLarge, VerifierError
from rollouts.records import RESERVED_KEYS

log = logging.getLogger(__name__)

# Routes of the resources server itself: a model must not reach them by naming a "tool".
RESERVED_ROUTES = frozenset({"seed_session", "verify", "aggregate_metrics", "reverify_mode", "mcp"})
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_ECHO_KEYS = frozenset({"responses_create_params", "response", "reward"})
_BODY_IN_MESSAGE = 2000


class RemoteEnvironment(Environment):
    """A NeMo Gym resources server at `url`, known to rows as `agent_ref.name == name`."""

    remote = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout: float = 60.0,
        max_reply_bytes: int = 16 * 1024 * 1024,
        attempts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.name = name
        self.url = url.rstrip("/")
        self.timeout = timeout  # per request, connect to last byte (the run sets it to --request-timeout)
        self.max_reply_bytes = max_reply_bytes  # the run sets it to --max-response-bytes
        self.reply_memory_bytes = DEFAULT_REPLY_MEMORY_BYTES  # the run sets it to --max-reply-memory-bytes
        self.attempts = attempts
        self.retry = RetryPolicy(
            max_retries=attempts - 1, base_s=backoff, cap_s=max_backoff, retry_after_cap_s=max_backoff
        )
        self._jar_checked = False

    def __repr__(self) -> str:
        return f"RemoteEnvironment(name={self.name!r}, url={self.url!r})"

    async def seed_session(self, row: dict[str, Any], http: httpx.AsyncClient | None) -> SessionState:
        session = SessionState()
        reply = await self._post(http, "seed_session", gym_row(row), session, retry_replies=True)
        session.data = _json_object(reply, "seed_session", self.name, required=False)
        return session

    async def verify(
        self,
        row: dict[str, Any],
        response: dict[str, Any],
        http: httpx.AsyncClient | None,
        session: SessionState | None = None,
    ) -> VerifyResult:
        body = {**gym_row(row), "response": complete_response(response, row)}
        reply = await self._post(http, "verify", body, session or SessionState(), retry_replies=True)
        data = _json_object(reply, "verify", self.name, required=True)
        reward = data.get("reward")
        # NaN and Infinity parse as floats but no stage can order, average or train on them: a failed rollout.
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise VerifierError(
                f"environment {self.name!r}: /verify reply has no finite numeric `reward` (got {reward!r}); "
                f"keys: {sorted(data)}",
                status_code=reply.status_code,
            )
        return VerifyResult(reward=float(reward), extra=verify_extras(data, body))

    async def call_tool(
        self, name: str, arguments: str, http: httpx.AsyncClient | None, session: SessionState | None
    ) -> str:
        if not _TOOL_NAME.match(name) or name in RESERVED_ROUTES:
            return json.dumps({"error": f"Unknown tool: {name!r}"})
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except (json.JSONDecodeError, TypeError) as exc:
            return json.dumps({"error": f"Invalid tool call arguments: {exc!r}"})
        try:
            reply = await self._post(http, name, parsed, session or SessionState(), retry_replies=False)
        except ResponseTooLarge as exc:  # the model learns the tool failed; the rollout goes on within its bounds
            return json.dumps({"error": f"tool reply too large: {exc.message}"})
        return reply.text

    # ---- transport ----------------------------------------------------------------------------------------------

    async def _send(self, http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        """One request within `timeout`, connect to last byte (httpx's is per read: a trickle never ends it)."""
        async with asyncio.timeout(self.timeout):
            streamed = await http.send(request, stream=True)
            try:
                body = await read_capped(streamed, self.max_reply_bytes, budget=reply_budget(self.reply_memory_bytes))
            finally:
                await streamed.aclose()
        headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(streamed.status_code, headers=headers, content=body, request=request)

    async def _post(
        self, http: httpx.AsyncClient | None, route: str, body: Any, session: SessionState, *, retry_replies: bool
    ) -> httpx.Response:
        """POST with this rollout's cookies; retries per the module docstring; returns a 2xx reply (or, for
        tools, any reply)."""
        if http is None:
            raise ConfigError(f"environment {self.name!r} is remote: the agent loop must be given an HTTP client")
        url = f"{self.url}/{route}"
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        problem = ""
        status: int | None = None
        for attempt in range(1, self.attempts + 1):
            request = http.build_request(
                "POST",
                url,
                content=payload,
                headers={"content-type": "application/json", **_cookie_header(session)},
                timeout=self.timeout,
            )
            if not session.cookies:
                request.headers.pop("cookie", None)  # never let the client's shared jar speak for this rollout
            answered: httpx.Response | None = None
            try:
                reply = await self._send(http, request)
            except TimeoutError:
                status, problem = None, f"no complete reply within {self.timeout:g} s (--request-timeout)"
                if not retry_replies:
                    break  # a tool may have run: do not run it twice
            except httpx.TransportError as exc:
                failure = transport_failure(exc)  # the aiohttp transport calls a hang-up mid-reply ConnectTimeout
                status, problem = None, failure.label
                if failure.sent and not retry_replies:
                    break  # a tool may have run: do not run it twice
            else:
                if not self._jar_checked:
                    self._jar_checked = True
                    if shares_cookies(http):
                        log.warning(
                            "environment %r: the HTTP client's aiohttp session keeps cookies, which overrides each "
                            "rollout's own session cookie for host-name URLs; build the client with "
                            "rollouts.envs.cookie_free_transport()",
                            self.name,
                        )
                update_cookies(session, reply)
                status = reply.status_code
                if not retry_replies or reply.is_success:
                    return reply
                if not self.retry.retryable(status):
                    raise VerifierError(
                        f"environment {self.name!r}: POST /{route} answered {status}: {_snippet(reply.text)}",
                        status_code=status,
                        route=route,
                        attempts=attempt,
                    )
                problem = f"HTTP {status}: {_snippet(reply.text)}"
                answered = reply
            if attempt < self.attempts:
                delay = self.retry.delay(attempt - 1, response=answered)
                log.debug("%s /%s attempt %d failed (%s); retrying in %.2fs", self.name, route, attempt, problem, delay)
                await asyncio.sleep(delay)
        raise VerifierError(
            f"environment {self.name!r}: POST /{route} failed after {attempt} attempt(s): {problem}",
            status_code=status,
            route=route,
            attempts=attempt,
        )


# ---- helpers (public where the collector or tests use them) -----------------------------------------------------

# NeMoGymResponseCreateParamsNonStreaming's fields (nemo-gym 0.7): anything else is refused with extra_forbidden.
GYM_PARAMS_KEYS = frozenset({
    "background", "include", "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model",
    "parallel_tool_calls", "previous_response_id", "prompt", "reasoning", "service_tier", "store",
    "context_management", "conversation", "moderation", "prompt_cache_key", "prompt_cache_retention",
    "safety_identifier", "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "user", "stream",
})  # fmt: skip
# The collector's bookkeeping on a rollout row: not the environment's business.
BOOKKEEPING_KEYS = frozenset(
    {"rollout_id", "status", "error", "attempts", "finish_reason", "timings", "schema_version", "sampling", "_session"}
)


def gym_params(params: dict[str, Any]) -> dict[str, Any]:
    """`responses_create_params` as NeMo Gym's model takes it: its keys only, function tools with `strict` and
    `parameters` (null when the row has none)."""
    out = {k: v for k, v in params.items() if k in GYM_PARAMS_KEYS}
    if isinstance(out.get("tools"), list):
        out["tools"] = [
            {"strict": None, "parameters": None, **tool}
            if isinstance(tool, dict) and tool.get("type") == "function" and "function" not in tool
            else tool
            for tool in out["tools"]
        ]
    return out


def gym_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row NeMo Gym's request models accept: input keys and verifier metadata, without our bookkeeping."""
    out = {k: v for k, v in row.items() if k not in BOOKKEEPING_KEYS}
    if isinstance(out.get("responses_create_params"), dict):
        out["responses_create_params"] = gym_params(out["responses_create_params"])
    return out


def gym_usage(
    input_tokens: int, output_tokens: int, *, cached_tokens: int | None = 0, reasoning_tokens: int | None = 0
) -> dict[str, Any]:
    """Responses-API `usage` with the token-detail objects NeMo Gym's `NeMoGymResponseUsage` requires."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def complete_response(response: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A Responses-API object with every field NeMo Gym validates (it answers 422 otherwise), without mutating.

    Top level: `id`, `created_at`, `model`, `object`, `output`, `parallel_tool_calls` (true), `tool_choice`
    ("auto"), `tools` (the row's `responses_create_params.tools`). Items: message `id`/`status`, `output_text`
    `annotations`, reasoning `id`/`summary`; `usage` gets its token-detail objects.
    """
    params = row.get("responses_create_params") or {}
    filled = dict(response)
    filled["id"] = response.get("id") or f"resp_{uuid.uuid4().hex}"
    filled["created_at"] = response.get("created_at") or int(time.time())
    filled["model"] = response.get("model") or params.get("model") or "unknown"
    filled["object"] = "response"
    filled["output"] = [_complete_item(item) for item in response.get("output") or []]
    if response.get("parallel_tool_calls") is None:
        filled["parallel_tool_calls"] = params.get("parallel_tool_calls", True)
    if response.get("tool_choice") is None:
        filled["tool_choice"] = params.get("tool_choice") or "auto"
    if response.get("tools") is None:
        filled["tools"] = list(gym_params(params).get("tools") or [])
    usage = response.get("usage")
    if usage is not None:
        filled["usage"] = _complete_usage(usage)
    return filled


def _complete_item(item: dict[str, Any]) -> dict[str, Any]:
    kind = item.get("type")
    if kind == "message":
        item = dict(item)
        item.setdefault("id", f"msg_{uuid.uuid4().hex}")
        item.setdefault("role", "assistant")
        item["status"] = item.get("status") or "completed"
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "output_text", "text": content}]
        item["content"] = [
            {**part, "annotations": part.get("annotations") or []}
            if isinstance(part, dict) and part.get("type") == "output_text"
            else part
            for part in content or []
        ]
    elif kind == "reasoning":
        item = dict(item)
        item.setdefault("id", f"rs_{uuid.uuid4().hex}")
        item["summary"] = item.get("summary") or []
    elif kind == "function_call":
        item = dict(item)
        item["call_id"] = item.get("call_id") or item.get("id") or f"call_{uuid.uuid4().hex}"
        arguments = item.get("arguments")
        item["arguments"] = (
            arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {})
        )
    return item


def _complete_usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    filled = {**usage, **gym_usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))}
    filled["total_tokens"] = int(usage.get("total_tokens") or filled["total_tokens"])
    for key in ("input_tokens_details", "output_tokens_details"):
        if isinstance(usage.get(key), dict):
            filled[key] = {**filled[key], **usage[key]}
    return filled


def verify_extras(reply: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """The verifier's own fields: the reply minus the echoed request; fields named like the collector's reserved
    keys go under `verifier`."""
    extras: dict[str, Any] = {}
    colliding: dict[str, Any] = {}
    for key, value in reply.items():
        if key in _ECHO_KEYS or (key in sent and sent[key] == value):
            continue
        (colliding if key in RESERVED_KEYS else extras)[key] = value
    if colliding:
        extras["verifier"] = colliding
    return extras


def update_cookies(session: SessionState, reply: httpx.Response) -> None:
    """Apply the reply's Set-Cookie headers to the rollout's session (a Max-Age=0 cookie is deleted)."""
    for header in reply.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            log.warning("ignoring a malformed Set-Cookie header from %s", reply.request.url)
            continue
        for name, morsel in jar.items():
            if morsel["max-age"] in ("0", "-1") or (morsel["expires"] and morsel.value == ""):
                session.cookies.pop(name, None)
            else:
                session.cookies[name] = morsel.value


def shares_cookies(http: httpx.AsyncClient) -> bool:
    """Whether `http` runs on an aiohttp session with a real cookie jar (best effort; False when unsure)."""
    aiohttp = sys.modules.get("aiohttp")
    session = getattr(getattr(http, "_transport", None), "client", None)
    if aiohttp is None or not isinstance(session, aiohttp.ClientSession):
        return False
    return not isinstance(session.cookie_jar, aiohttp.DummyCookieJar)


def _cookie_header(session: SessionState) -> dict[str, str]:
    return {"cookie": session.cookie_header()} if session.cookies else {}


def _json_object(reply: httpx.Response, route: str, env: str, *, required: bool) -> dict[str, Any]:
    try:  # NaN/Infinity anywhere in a reply would be stored, then break every reader: refused like bad JSON
        data = json.loads(reply.content, parse_constant=_no_constant, parse_float=_finite) if reply.content else {}
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        return data
    if not required and not reply.content:
        return {}
    raise VerifierError(
        f"environment {env!r}: /{route} answered {reply.status_code} with a body that is not a JSON object: "
        f"{_snippet(reply.text)}",
        status_code=reply.status_code,
        route=route,
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text} is out of range")
    return value


def _snippet(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _BODY_IN_MESSAGE else text[:_BODY_IN_MESSAGE] + "…"

"""A fault-injecting HTTP proxy for tests: aiohttp on loopback in front of an OpenAI-compatible server.

Each request takes the next planned fault (`handle.inject("reset", count=2)`) or, with none planned, passes through
to `upstream` (or answers a canned chat completion when there is no upstream). Faults:

  ok             pass through
  reset          headers and half the body, then the connection is aborted mid-body
  truncated      a complete HTTP reply whose JSON body is cut in half
  malformed      a 200 whose JSON has the wrong shape (`body=` picks it; default `{"choices": ["oops"]}`)
  html           a 200 text/html error page
  empty_choices  a 200 with `"choices": []`;  null_choices: `"choices": null`
  hang           reads the request and never answers
  trickle        the real body, one byte every `interval_s` (0.1 s)
  oversized      a valid completion whose content is `size` bytes (5 MB); `chunked=True` sends no Content-Length

    with start_fault_proxy(upstream=sim.url.removesuffix("/v1")) as proxy:
        proxy.inject("html")
        ... base URL f"{proxy.url}/v1" ...
        proxy.calls  # requests seen, by fault applied
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.servers.threaded import serve_in_thread

RELEASE = web.AppKey("release", asyncio.Event)
FAULTS = (
    "ok",
    "reset",
    "truncated",
    "malformed",
    "html",
    "empty_choices",
    "null_choices",
    "hang",
    "trickle",
    "oversized",
)


def completion(content: str, model: str = "proxy-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-proxy",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


@dataclass
class ProxyState:
    upstream: str | None
    plan: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    calls: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> tuple[str, dict[str, Any]]:
        with self.lock:
            return self.plan.popleft() if self.plan else ("ok", {})


def released(app: web.Application) -> asyncio.Event:
    return app[RELEASE]


def make_app(state: ProxyState) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def upstream_reply(request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        if state.upstream is None:
            if request.method == "GET":
                return 200, json.dumps({"object": "list", "data": [{"id": "proxy-model"}]}).encode(), "application/json"
            return 200, json.dumps(completion("The answer is \\boxed{4}.")).encode(), "application/json"
        if "client" not in session:
            session["client"] = aiohttp.ClientSession()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with session["client"].request(
            request.method, state.upstream + request.path_qs, data=body or None, headers=headers
        ) as reply:
            return reply.status, await reply.read(), reply.content_type

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault, params = state.next_fault() if request.method == "POST" else ("ok", {})
        state.calls[fault] += 1
        if fault == "hang":
            await released(request.app).wait()  # until the proxy stops
            return web.Response(status=503)
        if fault == "html":
            return web.Response(
                status=200, text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
            )
        if fault in ("malformed", "empty_choices", "null_choices"):
            shaped = {
                "malformed": params.get("body", {"choices": ["oops"]}),
                "empty_choices": {"choices": []},
                "null_choices": {"choices": None},
            }[fault]
            return web.json_response(shaped)
        if fault == "oversized":
            data = json.dumps(completion("x" * int(params.get("size", 5_000_000)))).encode()
            if not params.get("chunked"):
                return web.Response(body=data, content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "application/json"})  # no Content-Length
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                for start in range(0, len(data), 65536):
                    await response.write(data[start : start + 65536])
                await response.write_eof()
            except ConnectionResetError:
                pass
            return response
        status, data, content_type = await upstream_reply(request, body)
        if fault == "truncated":
            return web.Response(status=status, body=data[: len(data) // 2], content_type=content_type)
        if fault in ("reset", "trickle"):
            response = web.StreamResponse(
                status=status, headers={"Content-Type": content_type, "Content-Length": str(len(data))}
            )
            await response.prepare(request)
            if fault == "reset":
                await response.write(data[: len(data) // 2])
                await asyncio.sleep(0.01)
                request.transport.abort()  # type: ignore[union-attr]
                return response
            try:
                for index in range(len(data)):
                    await response.write(data[index : index + 1])
                    await asyncio.sleep(float(params.get("interval_s", 0.1)))
                await response.write_eof()
            except ConnectionResetError:  # the client gave up, as it should
                pass
            return response
        return web.Response(status=status, body=data, content_type=content_type)

    async def close_session(_app: web.Application) -> None:
        if "client" in session:
            await session["client"].close()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[RELEASE] = asyncio.Event()
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_cleanup.append(close_session)
    return app


class FaultProxyHandle:
    """A running proxy: `.url`, `inject(...)`, `.calls`, `stop()`."""

    def __init__(
        self,
        state: ProxyState,
        loop: asyncio.AbstractEventLoop,
        runner: web.AppRunner,
        thread: threading.Thread,
        port: int,
    ) -> None:
        self.state, self.port, self.url = state, port, f"http://127.0.0.1:{port}"
        self._loop, self._runner, self._thread = loop, runner, thread

    @property
    def calls(self) -> Counter:
        return self.state.calls

    def inject(self, fault: str, count: int = 1, **params: Any) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self.state.lock:
            self.state.plan.extend([(fault, params)] * count)

    def reset(self) -> None:
        with self.state.lock:
            self.state.plan.clear()
            self.state.calls.clear()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._runner.app[RELEASE].set)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_fault_proxy(upstream: str | None = None, host: str = "127.0.0.1") -> FaultProxyHandle:
    """Start the proxy in a daemon thread with its own event loop; `upstream` is a server root such as
    http://127.0.0.1:8000 (requests keep their path, so clients use f"{proxy.url}/v1")."""
    state = ProxyState(upstream=upstream.rstrip("/") if upstream else None)
    loop, runner, thread, port = serve_in_thread(make_app(state), host, 0, "fault proxy", shutdown_timeout=0.5)
    return FaultProxyHandle(state, loop, runner, thread, port)

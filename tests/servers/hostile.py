"""A hostile model server and resources server in one aiohttp app on loopback, for tests/integration/test_hostile.py.

Model routes: `GET /v1/models`; `POST /v1/chat/completions` answers `tool_calls` function calls to `calculate` per turn
(0: a plain answer; padded to `chat_bytes` when set), or, with `echo_headers`, a 500 whose body echoes the request's
headers (a key included).
Resources routes: `POST /seed_session`; `POST /calculate`; `POST /verify` per `verify`: "ok" (reward 1.0, or the
row's `expected_answer` when it is "NaN" / "Infinity" / "1e400", written raw into the JSON), "huge" (a `pad` field
of `huge_bytes`), "chunked" (`huge_bytes` of spaces in 256 KB chunks, no declared length), "gzip" (`huge_bytes` of
zeros sent gzip-compressed), "hang" (no answer for 600 s), "trickle"
(one byte a second).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.servers.threaded import serve_in_thread


@dataclass
class Hostility:
    tool_calls: int = 0
    echo_headers: bool = False
    verify: str = "ok"
    huge_bytes: int = 8 * 1024 * 1024
    chat_bytes: int = 0  # > 0: every chat reply is padded to about this many bytes
    tool_bytes: int = 0  # > 0: every tool reply is padded to about this many bytes
    calls: Counter[str] = field(default_factory=Counter)


def _chat_reply(state: Hostility, turn: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "The answer is 1."}
    finish = "stop"
    if state.tool_calls and turn == 0:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": "calculate", "arguments": json.dumps({"expression": "1+1"})},
                }
                for i in range(state.tool_calls)
            ],
        }
        finish = "tool_calls"
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "sim-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


def make_app(state: Hostility) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/v1/models")
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim-model", "object": "model"}]})

    @routes.post("/v1/chat/completions")
    async def chat(request: web.Request) -> web.Response:
        state.calls["chat"] += 1
        body = await request.json()
        if state.echo_headers:
            return web.json_response({"error": "bad request", "headers": dict(request.headers)}, status=500)
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "tool")
        reply = _chat_reply(state, 1 if turn else 0)
        if state.chat_bytes:
            reply["pad"] = "x" * state.chat_bytes
        return web.json_response(reply)

    @routes.post("/seed_session")
    async def seed(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    @routes.post("/calculate")
    async def calculate(request: web.Request) -> web.Response:
        state.calls["calculate"] += 1
        await request.read()
        return web.json_response({"result": 2, **({"pad": "x" * state.tool_bytes} if state.tool_bytes else {})})

    @routes.post("/verify")
    async def verify(request: web.Request) -> web.StreamResponse:
        state.calls["verify"] += 1
        body = await request.json()
        if state.verify == "hang":
            await asyncio.sleep(600)
        if state.verify == "trickle":
            reply = web.StreamResponse(headers={"content-type": "application/json"})
            await reply.prepare(request)
            for _ in range(600):
                await reply.write(b" ")
                await asyncio.sleep(1)
            return reply
        if state.verify == "chunked":  # no declared length: a reader learns the size only by reading
            reply = web.StreamResponse(headers={"content-type": "application/json"})
            await reply.prepare(request)
            piece = b" " * (256 * 1024)
            try:
                for _ in range(state.huge_bytes // len(piece)):
                    await reply.write(piece)
            except (ConnectionResetError, RuntimeError):  # the reader stopped at its cap and closed
                pass
            return reply
        if state.verify == "huge":
            return web.json_response({"reward": 1.0, "pad": "x" * state.huge_bytes})
        if state.verify == "gzip":
            bomb = gzip.compress(b"0" * state.huge_bytes, compresslevel=9)
            return web.Response(body=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"})
        raw = str(body.get("expected_answer", ""))
        reward = raw if raw in ("NaN", "Infinity", "-Infinity", "1e400") else "1.0"
        return web.Response(text='{"reward": ' + reward + "}", content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    return app


class HostileServer:
    """A running hostile server: `url` (the resources base), `model_url` (the OpenAI base), `state` to steer it."""

    def __init__(self) -> None:
        self.state = Hostility()
        self._loop, self._runner, self._thread, port = serve_in_thread(
            make_app(self.state), "127.0.0.1", 0, "hostile-server", shutdown_timeout=1.0
        )
        self.url = f"http://127.0.0.1:{port}"
        self.model_url = f"{self.url}/v1"

    def stop(self) -> None:
        done = threading.Event()

        async def shutdown() -> None:
            await self._runner.cleanup()
            done.set()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        done.wait(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

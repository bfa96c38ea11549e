"""A small but real NeMo Gym resources server for tests: aiohttp on loopback, as strict as NeMo Gym's request models.

Routes (validation in tests/servers/gym_schema.py, compared with NeMo Gym's own models in test_gym_strictness.py):
  POST /seed_session   a JSON object whose `responses_create_params` (when present) NeMo Gym accepts; starts a
                       session and sets the `session_id` cookie (re-sent on every reply, as Starlette's session
                       middleware does)
  POST /verify         422 unless the session cookie names a live session and the body passes NeMo Gym's
                       BaseVerifyRequest (strict `responses_create_params`, complete `response`, usage details);
                       scores "expected_answer is a substring of the output text" and answers the request echoed plus
                       `reward`, `judge`, `session_tool_calls` and a verifier `status` ("pass" / "fail")
  POST /calculate      {"expression": "..."} -> {"result": number} (a safe arithmetic evaluator; counts per session)
  POST /session_info   -> {"tool_calls": n, "seed": {...}} for the calling session

Failures are injected with `handle.fail_next(route, count, status)`; `handle.calls[route]` counts requests.

    handle = start_resources_server()          # a thread with its own event loop
    ... handle.url ...
    handle.stop()

Also runnable on its own: `python -m tests.servers.resources_server --port 8123`.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import operator
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.servers.gym_schema import seed_errors, verify_errors
from tests.servers.threaded import serve_in_thread

COOKIE = "session_id"
NEW_SESSION = web.RequestKey("new_session", str)


@dataclass
class ServerState:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    failures: dict[str, list[int]] = field(default_factory=dict)  # route -> statuses still to answer
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: dict[str, float] = field(default_factory=dict)  # route -> seconds to sleep before answering

    def take_failure(self, route: str) -> int | None:
        with self.lock:
            pending = self.failures.get(route)
            return pending.pop(0) if pending else None


# ---- validation: NeMo Gym's request models ------------------------------------------------------------------------


def _missing(loc: list[Any], msg: str = "Field required", kind: str = "missing") -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg}


def validate_verify_body(body: Any) -> list[dict[str, Any]]:
    """FastAPI-style 422 details for a /verify body (empty when valid)."""
    return verify_errors(body)


def output_text(response: dict[str, Any]) -> str:
    texts: list[str] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            texts = [p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict)]
    return "".join(texts)


# ---- a safe calculator ------------------------------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculate(expression: str) -> float | int:
    """Arithmetic on numbers only: no names, calls or attributes; exponents bounded."""

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        raise ValueError(f"unsupported expression element: {type(node).__name__}")

    if len(expression) > 200:
        raise ValueError("expression too long")
    return walk(ast.parse(expression, mode="eval"))


# ---- the app ------------------------------------------------------------------------------------------------------


def make_app(state: ServerState) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def gym_behaviour(request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.path.strip("/")
        state.calls[route] += 1
        await request.read()  # read the body first: a client that times out during the delay then leaves quietly
        if state.delay.get(route):
            await asyncio.sleep(state.delay[route])
        status = state.take_failure(route)
        if status is not None:
            return web.json_response({"detail": f"injected failure {status}"}, status=status)
        response = await handler(request)
        session_id = request.get(NEW_SESSION) or request.cookies.get(COOKIE)
        if session_id:  # like Starlette's SessionMiddleware: the cookie comes back on every reply
            response.set_cookie(COOKIE, session_id, httponly=True, samesite="Lax")
        return response

    async def read_json(request: web.Request) -> Any:
        try:
            return await request.json()
        except json.JSONDecodeError:
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"detail": [_missing([], "JSON decode error", "json_invalid")]}),
                content_type="application/json",
            ) from None

    def session_of(request: web.Request) -> dict[str, Any] | None:
        return state.sessions.get(request.cookies.get(COOKIE, ""))

    @routes.post("/seed_session")
    async def seed_session(request: web.Request) -> web.Response:
        body = await read_json(request)
        errors = seed_errors(body)
        if errors:
            return web.json_response({"detail": errors}, status=422)
        # Like Gym: a request that already carries a session cookie keeps that session id (a client whose cookie jar
        # leaks one rollout's cookie into another's seed would make the two share a session).
        session_id = request.cookies.get(COOKIE) or uuid.uuid4().hex
        state.sessions[session_id] = {"tool_calls": 0, "seed": body}
        request[NEW_SESSION] = session_id
        return web.json_response({})

    @routes.post("/verify")
    async def verify(request: web.Request) -> web.Response:
        body = await read_json(request)
        session = session_of(request)
        errors = validate_verify_body(body)
        if session is None:
            errors.append({"type": "missing", "loc": ["cookie", COOKIE], "msg": "no live session: call /seed_session"})
        if errors:
            return web.json_response({"detail": errors}, status=422)
        expected = str(body.get("expected_answer", ""))
        reward = 1.0 if expected and expected in output_text(body["response"]) else 0.0
        # like NeMo Gym verifiers, a top-level `status` of the verifier's own, which is not the collector's
        return web.json_response(
            {
                **body,
                "reward": reward,
                "judge": "substring",
                "session_tool_calls": session["tool_calls"],
                "status": "pass" if reward == 1.0 else "fail",
            }
        )

    @routes.post("/calculate")
    async def calculate_route(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("expression"), str):
            return web.json_response({"detail": [_missing(["expression"])]}, status=422)
        session = session_of(request)
        if session is not None:
            session["tool_calls"] += 1
        try:
            return web.json_response({"result": calculate(body["expression"])})
        except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError) as exc:
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"})

    @routes.post("/session_info")
    async def session_info(request: web.Request) -> web.Response:
        session = session_of(request)
        if session is None:
            return web.json_response({"detail": "no session"}, status=404)
        return web.json_response({"tool_calls": session["tool_calls"], "seed": session["seed"]})

    app = web.Application(middlewares=[gym_behaviour])
    app.add_routes(routes)
    return app


class ResourcesServerHandle:
    """A running server: `.url`, `.state`, `.calls`, `fail_next(...)`, `stop()`."""

    def __init__(
        self,
        state: ServerState,
        loop: asyncio.AbstractEventLoop,
        runner: web.AppRunner,
        thread: threading.Thread,
        port: int,
    ) -> None:
        self.state = state
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self._loop, self._runner, self._thread = loop, runner, thread

    @property
    def calls(self) -> Counter:
        return self.state.calls

    def fail_next(self, route: str, count: int = 1, status: int = 500) -> None:
        with self.state.lock:
            self.state.failures.setdefault(route, []).extend([status] * count)

    def set_delay(self, route: str, seconds: float) -> None:
        self.state.delay[route] = seconds

    def reset(self) -> None:
        with self.state.lock:
            self.state.failures.clear()
            self.state.delay.clear()
            self.state.calls.clear()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ResourcesServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_resources_server(host: str = "127.0.0.1", port: int = 0, **failures: int) -> ResourcesServerHandle:
    """Start the server in a daemon thread with its own event loop; `fail_verify=2` injects two 500s up front."""
    state = ServerState()
    for key, count in failures.items():
        if not key.startswith("fail_"):
            raise TypeError(f"unknown option {key!r}")
        state.failures[key.removeprefix("fail_")] = [500] * count
    loop, runner, thread, port = serve_in_thread(make_app(state), host, port, "resources server")
    return ResourcesServerHandle(state, loop, runner, thread, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    web.run_app(make_app(ServerState()), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

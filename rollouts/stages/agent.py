"""The agent loop of one rollout: model -> tool calls -> tools -> model ... until an end reason, as Responses items.

    limits = AgentLimits(max_turns=8, max_rollout_tokens=16384, timeout_s=900, tool_timeout_s=60)
    session = await env.seed_session(row, http)
    result = await run_agent(call_model, env, input_items, session=session, http=http, limits=limits)
    result.output, result.calls, result.end_reason, result.tools   # items, ModelCalls, why it ended, per-tool stats

`call_model(items)` is any async callable returning a `rollouts.client.model.ModelCall` (the generate stage binds the
model client, the row's params and sampling); `items` is the input plus everything produced so far. The same loop
serves remote NeMo Gym environments (tools over HTTP with the rollout's session cookies) and in-process ones,
through `Environment.call_tool`.

End reasons (`AgentResult.end_reason`):
  stop                the model answered without a function call
  length              a model call hit its max_output_tokens (its function calls, if any, are not run)
  max_turns           `max_turns` model calls were made and the last one called tools
  max_rollout_tokens  the rollout's output tokens reached `max_rollout_tokens` (checked between calls, so the
                      last call may overshoot by up to one call's max_output_tokens)
  deadline            `timeout_s` passed: the call or tools in flight were cancelled, what finished is kept
  no_tools            the model called a function but the environment runs none (a verifier-only environment)
  unparseable_output  the server could not read the model's next reply (ModelOutputError: e.g. its tool-call parser
                      refused what the model wrote); what came before is kept and scored. On the first call there
                      is nothing to keep: the rollout fails with that error, which is not retried
  <other>             any other finish reason of the last call (e.g. content_filter)
The limits are checked before each model call, after the previous turn's tools ran, so a state changed by the
last tool calls is what the verifier sees. Every function call gets exactly one `function_call_output`, in the
order of the calls; a tool that raises or times out gets its error as output (the model reads it) and the rollout
goes on. The function calls of one turn run concurrently (async tools overlap; cheap sync tools run inline; a
timed-out threaded tool keeps running in its thread and its result is dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rollouts.config import AgentLimits
from rollouts.envs.base import Environment, SessionState
from rollouts.envs.tools import render
from rollouts.errors import ModelOutputError, ProviderError, ToolError

if TYPE_CHECKING:
    import httpx

    from rollouts.client.model import ModelCall

CallModel = Callable[[list[dict[str, Any]]], Awaitable["ModelCall"]]

STOP, LENGTH, MAX_TURNS, MAX_ROLLOUT_TOKENS, DEADLINE, NO_TOOLS, UNPARSEABLE_OUTPUT = (
    "stop",
    "length",
    "max_turns",
    "max_rollout_tokens",
    "deadline",
    "no_tools",
    "unparseable_output",
)


DEFAULT_LIMITS = AgentLimits()


@dataclass(slots=True)
class ToolStats:
    """Calls of one tool name in one rollout: counts and milliseconds, for the profile."""

    calls: int = 0
    errors: int = 0  # raised, timed out, or cut by the deadline (timeouts are counted in both)
    timeouts: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0

    def add(self, ms: float, *, error: bool, timeout: bool) -> None:
        self.calls += 1
        self.errors += int(error)
        self.timeouts += int(timeout)
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)


@dataclass(slots=True)
class AgentResult:
    output: list[dict[str, Any]]  # model output items and function_call_output items, in order
    calls: list[ModelCall]
    end_reason: str
    tool_ms: float = 0.0  # wall-clock time of the tool phases (parallel calls overlap)
    tools: dict[str, ToolStats] = field(default_factory=dict)
    tool_timings: list[tuple[str, float]] = field(default_factory=list)  # (name, ms) of each tool call

    @property
    def turns(self) -> int:
        return len(self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(call.output_tokens for call in self.calls)

    def tool_record(self) -> dict[str, dict[str, float | int]]:
        """Per-tool statistics as a JSON object for the rollout row (milliseconds rounded to microseconds)."""
        return {
            name: {
                "calls": s.calls,
                "errors": s.errors,
                "timeouts": s.timeouts,
                "total_ms": round(s.total_ms, 3),
                "max_ms": round(s.max_ms, 3),
            }
            for name, s in self.tools.items()
        }


def error_output(exc: BaseException) -> str:
    """What the model reads when a tool fails: the message of a ToolError, else the exception's type and message."""
    if isinstance(exc, ToolError):
        return f"Error: {exc}"
    return f"Error: {type(exc).__name__}: {exc}" if str(exc) else f"Error: {type(exc).__name__}"


def with_env_tools(params: dict[str, Any], env: Environment) -> dict[str, Any]:
    """The row's `responses_create_params`, given the environment's tools when the row brings none of its own."""
    if params.get("tools"):
        return params
    specs = env.tool_specs()
    return {**params, "tools": specs} if specs else params


class _Rollout:
    """One run of the loop: its clock, its tool statistics."""

    def __init__(
        self, env: Environment, session: SessionState | None, http: httpx.AsyncClient | None, limits: AgentLimits
    ) -> None:
        self.env, self.session, self.http, self.limits = env, session, http, limits
        self.loop = asyncio.get_running_loop()
        self.deadline = None if limits.timeout_s is None else self.loop.time() + limits.timeout_s
        self.tools: dict[str, ToolStats] = {}
        self.timings: list[tuple[str, float]] = []  # (tool name, ms) of each call, in the order they ended

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.loop.time())

    def expired(self) -> bool:
        return self.deadline is not None and self.loop.time() >= self.deadline

    async def model(self, call_model: CallModel, items: list[dict[str, Any]]) -> ModelCall | None:
        """The next model call, or None when the deadline cut it."""
        if (
            self.deadline is None
        ):  # no scope to enter and leave per call (a timer handle each) when there is no deadline
            return await call_model(items)
        try:
            async with asyncio.timeout_at(self.deadline) as scope:
                return await call_model(items)
        except TimeoutError:
            if scope.expired():
                return None
            raise

    async def tool(self, item: dict[str, Any]) -> str:
        name = str(item.get("name") or "")
        timeout = self.limits.tool_timeout_s
        started = time.perf_counter()
        error = timed_out = False
        try:
            async with asyncio.timeout(timeout) as scope:
                text = await self.env.call_tool(name, item.get("arguments") or "{}", self.http, self.session)
            text = text if isinstance(text, str) else render(text)
        except TimeoutError as exc:
            error = True
            timed_out = scope.expired()
            text = f"Error: {name} timed out after {timeout:g} s" if timed_out else error_output(exc)
        except Exception as exc:  # the model sees the error and the rollout goes on
            error = True
            text = error_output(exc)
        except asyncio.CancelledError:  # cut by the rollout's deadline (or the whole run is stopping)
            self._count(name, started, error=True, timeout=False)
            raise
        self._count(name, started, error=error, timeout=timed_out)
        return text

    def tool_now(self, item: dict[str, Any]) -> str:
        """`tool` for a call the environment `runs_inline`: it cannot be awaited on, so no timer can cut it."""
        name = str(item.get("name") or "")
        started = time.perf_counter()
        error = False
        try:
            text = self.env.call_tool_now(name, item.get("arguments") or "{}", self.session)
            text = text if isinstance(text, str) else render(text)
        except Exception as exc:  # the model sees the error and the rollout goes on
            error = True
            text = error_output(exc)
        self._count(name, started, error=error, timeout=False)
        return text

    def _count(self, name: str, started: float, *, error: bool, timeout: bool) -> None:
        stats = self.tools.get(name)
        if stats is None:
            stats = self.tools[name] = ToolStats()
        ms = (time.perf_counter() - started) * 1000
        stats.add(ms, error=error, timeout=timeout)
        self.timings.append((name, ms))

    async def run_tools(self, calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """One output item per call, in call order; True when the deadline cut some of them. Calls past
        `max_tool_calls_per_turn` are not run: their output says so (5,000 calls in one turn made 8.5 MB rows)."""
        limit = self.limits.max_tool_calls_per_turn
        calls, extra = calls[:limit], calls[limit:]
        if all(self.env.runs_inline(str(item.get("name") or "")) for item in calls):
            # Nothing to overlap and nothing a deadline could cut (a task and a timer per call were ~5 % of a tool
            # rollout's CPU): the same outputs, statistics and order as the tasks below give such calls.
            texts, cut = [self.tool_now(item) for item in calls], False
        else:
            texts, cut = await self._tool_tasks(calls)
        outputs = [
            {"type": "function_call_output", "call_id": item["call_id"], "output": text}
            for item, text in zip(calls, texts, strict=True)
        ]
        refused = f"Error: not run: more than {limit} tool calls in one turn (--max-tool-calls-per-turn)"
        outputs += [{"type": "function_call_output", "call_id": item["call_id"], "output": refused} for item in extra]
        return outputs, cut

    async def _tool_tasks(self, calls: list[dict[str, Any]]) -> tuple[list[str], bool]:
        """The calls run concurrently, each under its tool timeout, all under the rollout's deadline."""
        tasks = [asyncio.ensure_future(self.tool(item)) for item in calls]
        try:
            done, pending = await asyncio.wait(tasks, timeout=self.remaining())
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        texts = [
            task.result() if task in done else f"Error: the rollout's time ran out before {item.get('name')} finished"
            for item, task in zip(calls, tasks, strict=True)
        ]
        return texts, bool(pending)


def _function_calls(output: list[dict[str, Any]], turn: int) -> list[dict[str, Any]]:
    calls = [item for item in output if item.get("type") == "function_call"]
    for index, item in enumerate(calls):
        if not item.get("call_id"):  # some servers omit it; the output must still point at its call
            item["call_id"] = f"call_{turn}_{index}"
    return calls


async def run_agent(
    call_model: CallModel,
    env: Environment,
    items: list[dict[str, Any]],
    *,
    session: SessionState | None = None,
    http: httpx.AsyncClient | None = None,
    limits: AgentLimits = DEFAULT_LIMITS,
) -> AgentResult:
    """Run one rollout to its end reason (see the module docstring) and end the environment's session.

    Raises what `call_model` raises (a failed model call fails the rollout) and a ProviderError when the deadline
    passes before the first model call answers; tool errors never raise.
    """
    rollout = _Rollout(env, session, http, limits)
    produced: list[dict[str, Any]] = []
    calls: list[ModelCall] = []
    tool_ms = 0.0
    try:
        while True:
            if len(calls) >= limits.max_turns:
                end = MAX_TURNS
                break
            if (
                limits.max_rollout_tokens is not None
                and sum(c.output_tokens for c in calls) >= limits.max_rollout_tokens
            ):
                end = MAX_ROLLOUT_TOKENS
                break
            try:
                call = None if rollout.expired() else await rollout.model(call_model, items + produced)
            except ModelOutputError:
                if not calls:
                    raise
                end = UNPARSEABLE_OUTPUT
                break
            if call is None:
                if not calls:
                    raise ProviderError(
                        f"no model call finished within the rollout's {limits.timeout_s:g} s",
                        status_code=None,
                        retryable=True,
                    )
                end = DEADLINE
                break
            calls.append(call)
            produced.extend(call.output)
            if call.finish_reason == LENGTH:
                end = LENGTH
                break
            function_calls = _function_calls(call.output, len(calls))
            if not function_calls:
                end = call.finish_reason if call.finish_reason not in ("stop", "tool_calls", "") else STOP
                break
            if not env.offers_tools:
                end = NO_TOOLS
                break
            started = time.perf_counter()
            outputs, cut = await rollout.run_tools(function_calls)
            tool_ms += (time.perf_counter() - started) * 1000
            produced.extend(outputs)
            if cut:
                end = DEADLINE
                break
    finally:
        env.end_session(session)
    return AgentResult(
        output=produced, calls=calls, end_reason=end, tool_ms=tool_ms, tools=rollout.tools, tool_timings=rollout.timings
    )

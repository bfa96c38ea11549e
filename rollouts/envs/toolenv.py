"""In-process tool environments: typed tools, per-rollout state made from the row, a verifier of the final state.

    from pydantic import BaseModel
    from rollouts.envs import ToolEnvironment

    class Counter(BaseModel):
        value: int = 0

    env = ToolEnvironment("counter", state=Counter, create_state=lambda row: Counter(value=row.get("start", 0)))

    @env.tool
    def add(state: Counter, amount: int) -> int:
        '''Add `amount` to the counter and return its new value.'''
        state.value += amount
        return state.value

    @env.verifier
    def reached_target(row, response, state: Counter) -> float:
        return float(state.value == row["target"])

Life of a rollout: `seed_session` makes the state (`create_state(row)`, or `state()`), each tool call gets it as
its `state` argument, `end_session` (the agent loop calls it) snapshots it as JSON into the session, and `verify`
rebuilds it from that snapshot with pydantic, so the verifier sees the same final state whether it runs right away
or after a resume from the run's files. The state type is anything pydantic can dump and validate (a `BaseModel`, a
dataclass, a dict...). A verifier returns a reward (a number or bool), `(reward, extras)`, or a `VerifyResult`;
it may be async. Subclasses may override `create_state` and `score_state` instead of passing functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from rollouts.envs.base import Environment, SessionState, VerifyResult
from rollouts.envs.tools import Tool, ToolRegistry
from rollouts.errors import VerifierError

if TYPE_CHECKING:
    import httpx

Verifier = Callable[[dict[str, Any], dict[str, Any], Any], Any]


def as_verify_result(value: Any, env: str) -> VerifyResult:
    """A verifier's return value (reward, bool, (reward, extras), dict with `reward`, VerifyResult) as a
    VerifyResult."""
    if isinstance(value, VerifyResult):
        return value
    if isinstance(value, (bool, int, float)):
        return VerifyResult(reward=float(value))
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return VerifyResult(reward=float(value[0]), extra=value[1])
    if isinstance(value, dict) and isinstance(value.get("reward"), (bool, int, float)):
        return VerifyResult(reward=float(value["reward"]), extra={k: v for k, v in value.items() if k != "reward"})
    raise VerifierError(
        f"environment {env!r}: the verifier returned {type(value).__name__}; return a number, (reward, extras) "
        "or a VerifyResult"
    )


class ToolEnvironment(Environment):
    """An environment whose tools are Python functions and whose verifier may look at the rollout's final state."""

    name: str = ""
    state_type: Any = None  # subclasses may set it instead of passing `state=`

    def __init__(
        self,
        name: str | None = None,
        *,
        state: Any = None,
        create_state: Callable[[dict[str, Any]], Any] | None = None,
        verifier: Verifier | None = None,
        tools: Iterable[Callable[..., Any] | Tool] = (),
    ) -> None:
        self.name = name or type(self).name
        if not self.name:
            raise ValueError("a ToolEnvironment needs a name")
        self.state_type = state if state is not None else type(self).state_type
        self._create_state = create_state
        self._verifier = verifier
        self.tools = ToolRegistry(tools)
        self._adapter = TypeAdapter(self.state_type) if self.state_type is not None else None

    # ---- declaring ------------------------------------------------------------------------------------------------

    def tool(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorator registering a tool: `@env.tool` or `@env.tool(name=..., thread=True, timeout=5.0)`."""
        return self.tools.tool(function, **options)

    def verifier(self, function: Verifier) -> Verifier:
        """Decorator setting the verifier: `function(row, response, state)`, sync or async."""
        self._verifier = function
        return function

    @property
    def stateful(self) -> bool:
        return self.state_type is not None or self._create_state is not None

    # ---- the environment contract -----------------------------------------------------------------------------------

    @property
    def offers_tools(self) -> bool:
        return len(self.tools) > 0

    def tool_specs(self) -> list[dict[str, Any]]:
        return self.tools.specs()

    def create_state(self, row: dict[str, Any]) -> Any:
        """A new state for one rollout of `row` (may return an awaitable)."""
        if self._create_state is not None:
            return self._create_state(row)
        return self.state_type() if self.state_type is not None else None

    async def seed_session(self, row: dict[str, Any], http: httpx.AsyncClient | None = None) -> SessionState | None:
        if not self.stateful:
            return None
        try:
            state = self.create_state(row)
            if inspect.isawaitable(state):
                state = await state
        except VerifierError:
            raise
        except Exception as exc:  # a bad row fails its rollout with a typed error
            raise VerifierError(
                f"environment {self.name!r} cannot make a state for this row: {type(exc).__name__}: {exc}"
            ) from exc
        return SessionState(live=state)

    async def call_tool(
        self, name: str, arguments: str, http: httpx.AsyncClient | None, session: SessionState | None
    ) -> str:
        return await self.tools.call(name, arguments, session.live if session is not None else None)

    def runs_inline(self, name: str) -> bool:
        # A subclass's own call_tool is always the one called.
        return type(self).call_tool is ToolEnvironment.call_tool and self.tools.inline(name) is not None

    def call_tool_now(self, name: str, arguments: str, session: SessionState | None) -> str:
        tool = self.tools.inline(name)
        if tool is None:
            return super().call_tool_now(name, arguments, session)
        return tool.run_now(arguments, session.live if session is not None else None)

    def end_session(self, session: SessionState | None) -> None:
        if session is not None and session.live is not None:
            session.data["state"] = self.dump_state(session.live)
            session.live = None

    def dump_state(self, state: Any) -> Any:
        if self._adapter is not None:
            return self._adapter.dump_python(state, mode="json")
        return pydantic_core.to_jsonable_python(state)

    def load_state(self, data: Any) -> Any:
        if self._adapter is None:
            return data
        try:
            return self._adapter.validate_python(data)
        except ValidationError as exc:
            raise VerifierError(f"environment {self.name!r}: the stored final state does not validate: {exc}") from exc

    def final_state(self, session: SessionState | None) -> Any:
        """The rollout's final state, always rebuilt from its JSON snapshot."""
        if not self.stateful:
            return None
        if session is not None and "state" in session.data:
            return self.load_state(session.data["state"])
        if session is not None and session.live is not None:
            return self.load_state(self.dump_state(session.live))
        raise VerifierError(f"environment {self.name!r}: the rollout has no recorded final state (no session)")

    def score_state(self, row: dict[str, Any], response: dict[str, Any], state: Any) -> Any:
        """The verifier; by default the function given as `verifier=` or with `@env.verifier`."""
        if self._verifier is None:
            raise VerifierError(f"environment {self.name!r} has no verifier")
        return self._verifier(row, response, state)

    async def verify(
        self,
        row: dict[str, Any],
        response: dict[str, Any],
        http: httpx.AsyncClient | None = None,
        session: SessionState | None = None,
    ) -> VerifyResult:
        state = self.final_state(session)
        try:
            result = self.score_state(row, response, state)
            if inspect.isawaitable(result):
                result = await result
        except VerifierError:
            raise
        except Exception as exc:  # a verifier bug fails this rollout with a typed error, not a raw traceback
            raise VerifierError(f"environment {self.name!r}: the verifier raised {type(exc).__name__}: {exc}") from exc
        return as_verify_result(result, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tools={[t.name for t in self.tools]})"

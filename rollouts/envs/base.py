"""The environment contract (`Environment`, `VerifyResult`, `SessionState`) and text helpers verifiers share.

An environment scores a finished rollout and may offer tools. Built-in environments run in-process and must be
cheap (verification runs inline in the collection loop); remote ones talk to a NeMo Gym resources server.
A wrong or unparseable answer is data: reward 0.0 with explanatory extras. `VerifierError` means the verifier itself
could not work (missing metadata on the row, remote server down) and fails only that rollout.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from rollouts.errors import VerifierError
from rollouts.records import output_text

if TYPE_CHECKING:
    import httpx


class VerifyResult(BaseModel):
    """A verifier's verdict. `extra` is stored top-level on the rollout row (as NeMo Gym does)."""

    model_config = ConfigDict(frozen=True)

    reward: float
    extra: dict[str, Any] = {}


@dataclass(slots=True)
class SessionState:
    """One rollout's session with a remote environment.

    Mutable on purpose: a resources server may re-issue its session cookie on any reply, and the latest value is
    what the next call must send. One `SessionState` per rollout; never share it between rollouts.
    """

    cookies: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # JSON: the /seed_session reply, an in-process final state
    # An in-process environment's live per-rollout objects. `Environment.end_session` snapshots them into `data`
    # and clears this, so a stored session is always JSON and verification sees the same state after a resume.
    live: Any = None

    def record(self) -> dict[str, Any]:
        """The session as its rollout's record keeps it until verified (`SessionState(**record)` rebuilds it):
        `dataclasses.asdict` without its deep copy, which was ~1.5 % of a tool rollout's CPU."""
        return {"cookies": dict(self.cookies), "data": dict(self.data), "live": self.live}

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())


class Environment(ABC):
    """What a prompt is solved in: a verifier, and optionally tools and a per-rollout session."""

    name: str
    remote: bool = False
    # The row must carry one of these keys (not null) to be scored at all; rows without are rejected at input time.
    required_keys: tuple[str, ...] = ()

    def row_problem(self, row: dict[str, Any]) -> str | None:
        """Why this environment can never score `row`, or None; checked when the input is read."""
        if self.required_keys and all(row.get(key) is None for key in self.required_keys):
            wanted = " or ".join(f"`{key}`" for key in self.required_keys)
            return f"environment {self.name!r} needs {wanted} on the row to score it"
        return None

    async def seed_session(self, row: dict[str, Any], http: httpx.AsyncClient | None) -> SessionState | None:
        """Start a per-rollout session before the first model call. Stateless built-ins have none."""
        return None

    @property
    def offers_tools(self) -> bool:
        """Whether the model's function calls run here (an environment that overrides `call_tool`).

        Without tools, a rollout ends at the model's first function call, with end reason `no_tools`.
        """
        return type(self).call_tool is not Environment.call_tool

    def end_session(self, session: SessionState | None) -> None:
        """Optional hook, a no-op by default: the rollout's last tool has run, so make the session storable (JSON only).
        Called by the agent loop."""
        return None

    def tool_specs(self) -> list[dict[str, Any]]:
        """Function tools (Responses-API shape) sent to the model when the row brings none of its own."""
        return []

    @abstractmethod
    async def verify(
        self,
        row: dict[str, Any],
        response: dict[str, Any],
        http: httpx.AsyncClient | None,
        session: SessionState | None = None,
    ) -> VerifyResult:
        """Score `response` (a Responses-API object) for the input `row`; `http` as for `call_tool`."""

    async def call_tool(
        self, name: str, arguments: str, http: httpx.AsyncClient | None, session: SessionState | None
    ) -> str:
        """Run tool `name` with `arguments` (a JSON string); the reply text goes back to the model.

        `http` is the agent loop's client, None when it has none (only remote environments need one)."""
        raise VerifierError(f"environment {self.name!r} has no tools (the model called {name!r})", tool=name)

    def runs_inline(self, name: str) -> bool:
        """Whether tool `name` answers at once, with no I/O and nothing awaited (a cheap sync function): the agent
        loop then calls `call_tool_now` in place of `call_tool`, without a task and a timer per call. False here."""
        return False

    def call_tool_now(self, name: str, arguments: str, session: SessionState | None) -> str:
        """`call_tool` of a tool that `runs_inline`, without a coroutine."""
        raise VerifierError(f"environment {self.name!r} runs no tool inline (the model called {name!r})", tool=name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class BuiltinEnvironment(Environment):
    """An in-process environment: `score` is the synchronous verifier, `verify` its async face."""

    remote = False

    @abstractmethod
    def score(self, row: dict[str, Any], response: dict[str, Any]) -> VerifyResult:
        """Synchronous, CPU-only scoring (also handy for benchmarks and re-processing)."""

    async def verify(
        self,
        row: dict[str, Any],
        response: dict[str, Any],
        http: httpx.AsyncClient | None = None,
        session: SessionState | None = None,
    ) -> VerifyResult:
        return self.score(row, response)


# ---- helpers shared by the built-in verifiers -------------------------------------------------------------------

_BRACE_OR_ESCAPE = re.compile(r"[{}\\]")
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BARE_BOX_TOKEN = re.compile(r" +([^\s$]+)")


def expected_value(row: dict[str, Any], env: str, keys: tuple[str, ...] = ("expected_answer",)) -> Any:
    """The row's reference answer under the first present key, or a VerifierError naming the key."""
    for key in keys:
        value = row.get(key)
        if value is not None:
            return value
    wanted = " or ".join(repr(k) for k in keys)
    raise VerifierError(
        f"environment {env!r} needs {wanted} on the input row to score it; the row has keys {sorted(row)}",
        missing_key=keys[0],
    )


def final_text(response: dict[str, Any] | None) -> str:
    """The assistant's final text, without a leading `<think>...</think>` block left in by the server."""
    text = output_text(response)
    cut = text.rfind("</think>")
    return text[cut + 8 :] if cut >= 0 else text


def braced_argument(text: str, start: int) -> tuple[str, int] | None:
    """The `{...}` group at `start` (after optional spaces) as (content, end index); None if absent or unbalanced.

    Escaped braces (`\\{`, `\\}`) do not count, so `\\boxed{\\{1,2\\}}` yields `\\{1,2\\}`.
    """
    n = len(text)
    while start < n and text[start] in " \t\n":
        start += 1
    if start >= n or text[start] != "{":
        return None
    depth = 0
    pos = start
    while True:
        match = _BRACE_OR_ESCAPE.search(text, pos)
        if match is None:
            return None
        pos = match.end()
        char = match.group()
        if char == "\\":
            pos += 1  # skip the escaped character
        elif char == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return text[start + 1 : pos - 1], pos


def last_boxed(text: str) -> tuple[str, int] | None:
    """Content and position of the last complete `\\boxed{...}` / `\\fbox{...}` (also `\\boxed 5`).

    A box cut off by the token limit is skipped in favour of the one before it.
    """
    end = len(text)
    while True:
        at = max(text.rfind(cmd, 0, end) for cmd in _BOX_COMMANDS)
        if at < 0:
            return None
        after = at + (6 if text.startswith("\\boxed", at) else 5)
        group = braced_argument(text, after)
        if group is not None:
            content = group[0].strip()
            if content:
                return content, at
        elif after < len(text) and text[after] == " ":
            # `\boxed 5`: TeX takes one token; models write a short answer up to the next space or `$`.
            token = _BARE_BOX_TOKEN.match(text, after)
            if token:
                return token.group(1), at
        end = at

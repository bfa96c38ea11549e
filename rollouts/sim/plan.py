"""Plans written in a prompt: the tool calls of each turn, read from the numbered lines after a `Steps:` line.

    Steps:
    1. `get_value(key="apples")` and `get_value(key="pears")`
    2. `set_value(key="total", value="8")`

is a plan of two turns, the first with two parallel calls. Each numbered line (`^\\s*\\d+\\.\\s+`) is one turn; each
backticked `name(key=value, ...)` on it is one call, its arguments Python literals (read with `ast.literal_eval`,
never evaluated) sent as a JSON object. The plan ends at the first blank line after its first step. Calls that do not
parse (positional or `**` arguments, a value that is no literal or has no JSON form, more than `MAX_CALL_CHARS`) are
left out, and so are calls of tools the request does not offer; a turn left without calls is no turn.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Collection
from functools import lru_cache

from rollouts.sim.tokens import ToolCall

Plan = tuple[tuple[ToolCall, ...], ...]

MAX_CALL_CHARS = 4000  # keeps ast's work on a hostile prompt small
MAX_STEPS = 64
_STEPS_LINE = re.compile(r"^[ \t]*Steps:[ \t]*$", re.MULTILINE)
_STEP_LINE = re.compile(r"^\s*\d+\.\s+")
_CALL = re.compile(r"`([A-Za-z_]\w*\([^`]*\))`")


def read_plan(text: str, offered: Collection[str]) -> Plan:
    """The plan in `text` restricted to the `offered` tool names; () when there is none."""
    if "Steps:" not in text:  # the common case costs one substring search
        return ()
    steps = (tuple(call for call in step if call.name in offered) for step in parse_plan(text))
    return tuple(step for step in steps if step)


@lru_cache(maxsize=4096)  # every model call of a rollout, and every rollout of a prompt, reads the same text
def parse_plan(text: str) -> Plan:
    """Every turn of the first `Steps:` block of `text`, whatever tools exist (turns may be empty)."""
    match = _STEPS_LINE.search(text)
    if match is None:
        return ()
    steps: list[tuple[ToolCall, ...]] = []
    for line in text[match.end() :].splitlines():
        if not line.strip():
            if steps:
                break
            continue
        if _STEP_LINE.match(line) is None:
            continue
        steps.append(tuple(call for source in _CALL.findall(line) if (call := parse_call(source)) is not None))
        if len(steps) == MAX_STEPS:
            break
    return tuple(steps)


def parse_call(source: str) -> ToolCall | None:
    """`name(k="v", n=2)` as a ToolCall with JSON arguments (`{"k": "v", "n": 2}`); None when it is not one."""
    if len(source) > MAX_CALL_CHARS:
        return None
    try:
        node = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        return None
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None or keyword.arg in arguments:  # **mapping, or a name given twice
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
    try:
        text = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # sets, bytes, complex numbers, inf: no JSON form
        return None
    return ToolCall(node.func.id, text)

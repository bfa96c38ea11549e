"""Row checks in Python for the chunks polars refuses: they name the bad line and the reason, and let good lines
through.

The fast path (frame.parse_chunk) fails a whole chunk when one line is not JSON or a typed field has the wrong type;
these checks mirror frame.TYPED_SCHEMA so that, once the lines they flag are removed, the rest parses.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from ..errors import RowError
from ..inputs import parse_json, writable

MAX_EXAMPLES = 20


class BadRows(BaseModel):
    """Rows that were skipped (with --skip-bad-rows), by reason, with the first few locations."""

    count: int = 0
    by_reason: dict[str, int] = Field(default_factory=dict)
    examples: list[str] = Field(default_factory=list)  # "file:line: reason"

    def add(self, file: str, line: int, reason: str, detail: str | None = None) -> None:
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{file}:{line}: {detail or reason}")

    def merge(self, other: BadRows) -> BadRows:
        merged = self.model_copy(deep=True)
        merged.count += other.count
        for reason, n in other.by_reason.items():
            merged.by_reason[reason] = merged.by_reason.get(reason, 0) + n
        merged.examples = (merged.examples + other.examples)[:MAX_EXAMPLES]
        return merged


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional(value: Any, test: Any) -> bool:
    return value is None or test(value)


def _number_list(value: Any, test: Any) -> bool:
    return value is None or (isinstance(value, list) and all(test(v) for v in value))


def check_line(text: str) -> tuple[str, str] | None:
    """(reason, detail) when the line cannot be parsed into the typed schema, else None."""
    try:
        row = parse_json(text)  # strict: NaN, Infinity, 1e999 and integers past 64 bits are refused with their column
    except RowError as exc:
        return "invalid JSON", str(exc)
    if not isinstance(row, dict):
        return "not a JSON object", f"row is a JSON {type(row).__name__}, not an object"
    try:
        writable(row)
    except RowError as exc:
        return "invalid JSON", str(exc)
    checks: list[tuple[str, bool, str]] = [
        ("reward", _optional(row.get("reward"), _is_number), "a number"),
        ("_ng_task_index", _optional(row.get("_ng_task_index"), _is_int), "an integer"),
        ("_ng_rollout_index", _optional(row.get("_ng_rollout_index"), _is_int), "an integer"),
        (
            "responses_create_params",
            _optional(row.get("responses_create_params"), lambda v: isinstance(v, dict)),
            "an object",
        ),
        ("response", _optional(row.get("response"), lambda v: isinstance(v, dict)), "an object"),
    ]
    for key in ("rollout_id", "status", "finish_reason"):
        checks.append((key, _optional(row.get(key), lambda v: isinstance(v, str | int | float)), "a string"))
    params = row.get("responses_create_params")
    if isinstance(params, dict) and not _optional(params.get("parallel_tool_calls"), lambda v: isinstance(v, bool)):
        return "bad responses_create_params", "responses_create_params.parallel_tool_calls must be a boolean"
    for key, ok, kind in checks:
        if not ok:
            return f"bad {key}", f"{key} must be {kind}, got {json.dumps(row.get(key))[:60]}"
    return _check_response(row.get("response"))


def _check_response(response: dict[str, Any] | None) -> tuple[str, str] | None:
    if response is None:
        return None
    output = response.get("output")
    if output is not None and not isinstance(output, list):
        return "bad response.output", "response.output must be a list of items"
    for i, item in enumerate(output or []):
        where = f"response.output[{i}]"
        if not isinstance(item, dict):
            return "bad response.output", f"{where} must be an object"
        if not _optional(item.get("type"), lambda v: isinstance(v, str)):
            return "bad response.output", f"{where}.type must be a string"
        for key in ("prompt_token_ids", "generation_token_ids"):
            if not _number_list(item.get(key), _is_int):
                return f"bad {key}", f"{where}.{key} must be a list of integers"
        if not _number_list(item.get("generation_log_probs"), _is_number):
            return "bad generation_log_probs", f"{where}.generation_log_probs must be a list of numbers"
    usage = response.get("usage")
    if usage is not None and (not isinstance(usage, dict) or not _optional(usage.get("output_tokens"), _is_int)):
        return "bad response.usage", "response.usage.output_tokens must be an integer"
    details = response.get("incomplete_details")
    if details is not None and not isinstance(details, dict):
        return "bad response.incomplete_details", "response.incomplete_details must be an object"
    return None


def locate_bad_lines(lines: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """Split (line, text) pairs into good ones and (line, reason, detail) for bad ones."""
    good: list[tuple[int, str]] = []
    bad: list[tuple[int, str, str]] = []
    for number, text in lines:
        problem = check_line(text)
        if problem is None:
            good.append((number, text))
        else:
            bad.append((number, *problem))
    return good, bad

"""Checks on tool use: malformed tool calls (bad JSON, schema violations, unknown tools) and repeated tool errors.

malformed_tool_call judges each distinct (tool list, tool name, arguments) once, in Python: JSON parsing and a small
JSON-schema subset have no polars equivalent, and distinct calls are far fewer than rows. The schema subset covers
what function-calling schemas use: `type` (one or a list), `enum`, `required`, `properties`, `additionalProperties:
false`, and `items` for arrays, recursively. tool_error_loop is polars throughout.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
import polars as pl

from .config import QualityConfig
from .registry import quote_text, quoted, register, result

_UNOBSERVED = "\x00unobserved"  # a call that is valid JSON but whose tool list the row does not declare
_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "object": (dict,), "array": (list,)}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) else "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array" if isinstance(value, list) else type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return name == "number" or isinstance(value, int) or value.is_integer()
    return isinstance(value, _TYPES.get(name, object))


def _shown(value: Any, limit: int) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def schema_problem(value: Any, schema: Any, path: str, limit: int) -> str | None:
    """The first way `value` breaks `schema` (the subset in the module docstring), or None."""
    if not isinstance(schema, dict):
        return None
    where = path or "arguments"
    types = schema.get("type")
    allowed = [types] if isinstance(types, str) else [t for t in types or [] if isinstance(t, str)]
    if allowed and not any(_is_type(value, t) for t in allowed):
        return f"{where}: expected {' or '.join(allowed)}, got {_json_type(value)} {_shown(value, limit)}"
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"{where}: {_shown(value, limit)} is not one of {_shown(enum, limit)}"
    if isinstance(value, dict):
        given = schema.get("properties")
        props: dict[str, Any] = given if isinstance(given, dict) else {}
        for key in schema.get("required") or []:
            if key not in value:
                return f"{where}: missing required key {_shown(key, limit)}"
        if schema.get("additionalProperties") is False:
            for key in value:
                if key not in props:
                    return f"{where}: unknown key {_shown(key, limit)}"
        for key, sub in props.items():
            if key in value:
                problem = schema_problem(value[key], sub, f"{path}.{key}" if path else key, limit)
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for at, item in enumerate(value):
            problem = schema_problem(item, schema["items"], f"{where}[{at}]", limit)
            if problem:
                return problem
    return None


@lru_cache(maxsize=1024)
def tool_schemas(tools: str) -> dict[str, Any]:
    """{tool name: its parameters schema (None when it has none)} from a row's `tools` column."""
    out: dict[str, Any] = {}
    for tool in orjson.loads(tools):
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out[tool["name"]] = tool.get("parameters")
    return out


def judge_call(tools: str | None, name: str | None, arguments: str | None, config: QualityConfig) -> str | None:
    """What is wrong with one tool call (an evidence string), None when nothing is, _UNOBSERVED when it cannot tell."""
    limit = config.evidence_chars
    label = name or "?"
    if not name:
        return "a call without a tool name"
    text = (arguments or "").strip()
    try:
        value = orjson.loads(text) if text else {}  # no arguments at all: an empty object, as OpenAI sends
    except orjson.JSONDecodeError:
        return f"{label}: arguments are not JSON: {quote_text(text, limit)}"
    if isinstance(value, str):
        return f"{label}: arguments are a JSON string (encoded twice?): {quote_text(text, limit)}"
    if not isinstance(value, dict):
        return f"{label}: arguments are a JSON {_json_type(value)}, not an object: {quote_text(text, limit)}"
    if tools is None:
        return _UNOBSERVED
    schemas = tool_schemas(tools)
    if name not in schemas:
        declared = ", ".join(sorted(schemas)) or "none"
        return f"unknown tool {quote_text(name, limit)} (declared: {declared})"
    if not config.tool_schema:
        return None
    problem = schema_problem(value, schemas[name], "", limit)
    return f"{label}: {problem}" if problem else None


@register("malformed_tool_call", needs=("tools", "tool_calls"))
def malformed_tool_call(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """A tool call whose arguments are not a JSON object, do not match the tool's JSON schema (required keys,
    types, enums, unknown keys), or that names a tool the row does not declare (unobserved: a valid-JSON call in a
    row that declares no tools)."""
    calls = (
        frame.with_row_index("_at")
        .select("_at", "tools", call="tool_calls")
        .explode("call")
        .drop_nulls("call")
        .unnest("call")
    )
    keys = ["tools", "name", "arguments"]
    distinct = calls.select(keys).unique()
    verdicts = [judge_call(tools, name, args, config) for tools, name, args in distinct.iter_rows()]
    distinct = distinct.with_columns(problem=pl.Series(verdicts, dtype=pl.String))
    judged = calls.join(distinct, on=keys, how="left", nulls_equal=True)
    unobserved = pl.col("problem") == _UNOBSERVED
    bad = pl.col("problem").filter(pl.col("problem").is_not_null() & ~unobserved)
    per_row = judged.group_by("_at").agg(first=bad.first(), problems=bad.len(), unobserved=unobserved.any())
    merged = frame.with_row_index("_at").select("_at").join(per_row, on="_at", how="left").sort("_at")
    problems = pl.col("problems").fill_null(0)
    fired = pl.when(problems > 0).then(True).when(pl.col("unobserved").fill_null(False)).then(None).otherwise(False)
    more = pl.when(problems > 1).then(pl.format(" (+{} more)", problems - 1)).otherwise(pl.lit(""))
    return result(merged, fired, pl.col("first") + more)


@register("tool_error_loop", needs=("tool_outputs",))
def tool_error_loop(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The same error from the same tool `tool_error_min_repeats` times or more in one rollout (an output matching
    `tool_error_pattern`; errors differing only in digits are the same by default): the model is not reading it."""
    outputs = (
        frame.with_row_index("_at").select("_at", out="tool_outputs").explode("out").drop_nulls("out").unnest("out")
    )
    text = pl.col("output").fill_null("")
    errors = outputs.filter(text.str.contains(config.tool_error_pattern))
    key = text.str.strip_chars().str.slice(0, 300)
    if config.tool_error_ignore_digits:
        key = key.str.replace_all(r"\d+", "0")
    counts = (
        errors.with_columns(key=key, name=pl.col("name").fill_null("?"))
        .group_by("_at", "name", "key")
        .agg(n=pl.len(), example=pl.col("output").first())
        .sort(["_at", "n", "name"], descending=[False, True, False])
        .group_by("_at", maintain_order=True)
        .first()
    )
    merged = frame.with_row_index("_at").select("_at").join(counts, on="_at", how="left").sort("_at")
    fired = pl.col("n").fill_null(0) >= config.tool_error_min_repeats
    evidence = pl.format("{} ×{}: {}", pl.col("name"), pl.col("n"), quoted(pl.col("example"), config.evidence_chars))
    return result(merged, fired, evidence)

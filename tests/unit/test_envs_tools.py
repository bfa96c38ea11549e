"""The tool registry: JSON schema from signatures and docstrings, validated calls, sync, async and threaded tools."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from rollouts.envs import Tool, ToolError, ToolRegistry, tool_from_function
from rollouts.envs.tools import parse_docstring, render
from rollouts.process.formats import chat_tools


def google(state: Any, city: str, days: int = 3, units: Literal["c", "f"] = "c") -> str:
    """Forecast for a city.

    Uses the cached forecast when there is one.

    Args:
        city (str): the city's name,
            as the user wrote it.
        days: how many days ahead.
        units: c or f.

    Returns:
        The forecast as text.
    """
    return f"{city}:{days}{units}"


def sphinx(query: str, limit: int) -> list[str]:
    """Search the index.

    :param query: words to look for
    :param int limit: at most this many hits
    :returns: the hits
    """
    return [query] * limit


def numpy(a: float, b: float) -> float:
    """Multiply two numbers.

    Parameters
    ----------
    a : float
        The first factor.
    b : float
        The second factor.

    Returns
    -------
    float
    """
    return a * b


class Point(BaseModel):
    x: float
    y: float


def typed(
    point: Point, tags: list[str], note: str | None, weight: Annotated[float, Field(description="kg", ge=0)]
) -> Point:
    """Move a point."""
    return Point(x=point.x + 1, y=point.y)


def test_schema_from_a_google_docstring_skips_state_and_keeps_defaults() -> None:
    tool = tool_from_function(google)
    assert tool.takes_state and not tool.is_async and not tool.strict  # defaults make it non-strict
    assert tool.spec() == {
        "type": "function",
        "name": "google",
        "description": "Forecast for a city.\n\nUses the cached forecast when there is one.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city's name, as the user wrote it."},
                "days": {"type": "integer", "default": 3, "description": "how many days ahead."},
                "units": {"type": "string", "enum": ["c", "f"], "default": "c", "description": "c or f."},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": False,
    }


def test_sphinx_and_numpy_docstrings_describe_parameters() -> None:
    assert parse_docstring(sphinx.__doc__) == (
        "Search the index.",
        {"query": "words to look for", "limit": "at most this many hits"},
    )
    assert parse_docstring(numpy.__doc__) == (
        "Multiply two numbers.",
        {"a": "The first factor.", "b": "The second factor."},
    )
    tool = tool_from_function(sphinx)
    assert tool.strict and tool.parameters["required"] == ["query", "limit"]
    assert tool.parameters["properties"]["limit"] == {"type": "integer", "description": "at most this many hits"}


def test_nested_models_optional_and_field_metadata_reach_the_schema() -> None:
    tool = tool_from_function(typed)
    props = tool.parameters["properties"]
    assert props["weight"] == {"type": "number", "minimum": 0, "description": "kg"}
    assert props["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert tool.parameters["$defs"]["Point"]["additionalProperties"] is False  # closed, as strict mode requires
    assert tool.strict and tool.parameters["required"] == ["point", "tags", "note", "weight"]
    assert "title" not in str(tool.parameters)


def test_a_name_and_description_can_be_given() -> None:
    tool = tool_from_function(numpy, name="multiply", description="a times b")
    assert (tool.name, tool.description) == ("multiply", "a times b")


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (lambda *values: 0, "must be a named parameter"),
        (lambda **options: 0, "must be a named parameter"),
    ],
)
def test_unsupported_signatures_are_refused_when_registered(function: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tool_from_function(function, name="bad")


def test_bad_names_duplicates_and_async_threads_are_refused() -> None:
    with pytest.raises(ValueError, match="tool name"):
        tool_from_function(numpy, name="has space")
    registry = ToolRegistry([numpy])
    with pytest.raises(ValueError, match="already registered"):
        registry.add(numpy)

    async def fetch() -> str:
        return ""

    with pytest.raises(ValueError, match="thread=True is for blocking sync functions"):
        tool_from_function(fetch, thread=True)


async def test_sync_async_and_threaded_tools_run_with_validated_arguments() -> None:
    registry = ToolRegistry()
    threads: list[str] = []

    @registry.tool
    async def slow_echo(text: str, times: int = 1) -> str:
        """Echo, asynchronously."""
        await asyncio.sleep(0)
        return text * times

    @registry.tool(thread=True)
    def blocking(text: str) -> dict[str, str]:
        """Runs in a worker thread."""
        threads.append(threading.current_thread().name)
        return {"echo": text}

    registry.add(google)
    assert await registry.call("slow_echo", '{"text": "ab", "times": 2}') == "abab"
    assert await registry.call("blocking", {"text": "x"}) == '{"echo":"x"}'
    assert threads and threads[0] != threading.current_thread().name
    assert await registry.call("google", '{"city": "Oslo"}', state="ignored") == "Oslo:3c"
    assert await registry.call("google", '{"city": "Oslo", "days": "5"}') == "Oslo:5c"  # lax, as JSON models write
    assert [spec["name"] for spec in registry.specs()] == ["slow_echo", "blocking", "google"]
    assert len(registry) == 3 and "google" in registry


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{oops", "the arguments of google are not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ("{}", "city: Field required"),
        ('{"city": "Oslo", "units": "k"}', "units: Input should be 'c' or 'f'"),
        ('{"city": "Oslo", "country": "NO"}', "country: Extra inputs are not permitted"),
    ],
)
async def test_bad_arguments_are_tool_errors_for_the_model(arguments: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        await ToolRegistry([google]).call("google", arguments)


@pytest.mark.parametrize(
    "arguments",
    [
        '{"big": 123456789012345678901234567890, "x": 3.0000000000000004}',
        '{"big": 1, "x": NaN}',
        '{"big": -9223372036854775809, "x": -Infinity, "text": "\\ud800 lone"}',
        '{"big": 2, "big": 3, "x": 1e400, "text": "caf\\u00e9"}',
        ' {"big": 0, "x": 0} ',
        '{"big": 0, "x": 0} trailing',
        "{oops",
        '"a string"',
    ],
)
def test_arguments_read_as_json_loads_and_pydantic_read_them(arguments: str) -> None:
    """The arguments parser (pydantic's, `json` as its fallback) gives what `json.loads` then validation give."""

    def exact(big: int, x: float, text: str = "") -> str:
        """Echo."""
        return text

    tool = tool_from_function(exact)

    def through_json_loads() -> Any:
        try:
            raw = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return f"the arguments of exact are not valid JSON ({exc.msg} at position {exc.pos})"
        if not isinstance(raw, dict):
            return f"the arguments of exact must be a JSON object, not {type(raw).__name__}"
        try:
            validated = tool.arguments.model_validate(raw)
        except ValidationError:
            return "invalid"
        return {name: getattr(validated, name) for name in type(validated).model_fields}

    try:
        got: Any = tool.parse(arguments)
    except ToolError as exc:
        got = "invalid" if str(exc).startswith("invalid arguments") else str(exc)
    assert repr(got) == repr(through_json_loads())  # repr: NaN is not equal to itself


async def test_unknown_tools_name_the_available_ones() -> None:
    with pytest.raises(ToolError, match=r"no tool named 'weather' \(available: google, numpy\)"):
        await ToolRegistry([google, numpy]).call("weather", "{}")


@dataclass
class Reading:
    value: float


def test_results_render_as_text_or_json() -> None:
    assert render("plain") == "plain"
    assert render(None) == "null"
    assert render([1, 2]) == "[1,2]"
    assert render(Point(x=1, y=2)) == '{"x":1.0,"y":2.0}'
    assert render(Reading(0.5)) == '{"value":0.5}'
    assert render({"when": object}).startswith('{"when":"<class')  # anything else falls back to its text


def test_specs_convert_to_chat_tools_with_strict_kept() -> None:
    spec = tool_from_function(sphinx).spec()
    (chat,) = chat_tools([spec])
    assert chat == {
        "type": "function",
        "function": {k: spec[k] for k in ("name", "description", "parameters", "strict")},
    }


def test_tool_objects_can_be_registered_as_built() -> None:
    built = tool_from_function(numpy)
    assert isinstance(built, Tool) and ToolRegistry([built]).get("numpy") is built

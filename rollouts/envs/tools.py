"""Tools as typed Python functions: JSON schema from the signature and docstring, validated calls, text results.

    registry = ToolRegistry()

    @registry.tool
    def add(state: Counter, amount: int) -> int:
        '''Add to the counter and return its new value.

        Args:
            amount: how much to add; may be negative.
        '''

    registry.specs()    # [{"type": "function", "name": "add", "description": ..., "parameters": {...}, "strict": True}]
    await registry.call("add", '{"amount": 2}', state)  # "2"

A tool is a sync or async function. A parameter named `state` receives the rollout's state and is not part of the
schema; every other parameter must be named (no `*args`) and may carry a type, a default and a
`pydantic.Field(description=...)`. Descriptions come from the docstring: its text up to the first section is the
tool's description, and an `Args:` (Google), `:param x:` (Sphinx) or `Parameters` (NumPy) section describes the
parameters. The schema forbids unknown arguments; it is marked `strict` (OpenAI structured tool calls) when every
parameter is required.

A call's arguments are parsed and validated before the function runs. Bad JSON, a wrong type, a missing or unknown
argument, or an unknown tool raise `ToolError` with a message written for the model, as does anything a tool raises
on purpose with `raise ToolError("...")`. Results become text: a string as is, anything else as JSON.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, get_type_hints

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo

from rollouts.errors import ToolError

STATE_PARAMETER = "state"
_GOOGLE_HEADER = re.compile(r"^(?:Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments):$")
_NUMPY_HEADER = re.compile(r"^(?:Parameters|Params|Other Parameters)$")
_OTHER_HEADER = re.compile(r"^(?:Returns?|Yields?|Raises|Examples?|Notes?|See Also|References|Warnings?|Attributes):?$")
_GOOGLE_ARG = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_FIELD = re.compile(r"^:(\w+)(?:\s+([^:]*?))?\s*:\s*(.*)$")
_NUMPY_ARG = re.compile(r"^(\w+)\s*(?::.*)?$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# ---- docstrings ---------------------------------------------------------------------------------------------------


def _is_dashes(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 3 and set(stripped) == {"-"}


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google, Sphinx or NumPy style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section, current, params_indent = "description", None, 0
    for index, raw in enumerate(lines):
        line = raw.strip()
        following = lines[index + 1] if index + 1 < len(lines) else ""
        indented = raw[:1] in (" ", "\t")
        if not indented and _GOOGLE_HEADER.match(line):
            section, current = "google", None
        elif not indented and _NUMPY_HEADER.match(line) and _is_dashes(following):
            section, current = "numpy", None
        elif not indented and _OTHER_HEADER.match(line) and (line.endswith(":") or _is_dashes(following)):
            section, current = "other", None
        elif (field := _SPHINX_FIELD.match(line)) and not indented:
            section = "sphinx"
            kind, names, text = field.groups()
            current = names.split()[-1] if kind == "param" and names else None
            if current:
                params[current] = text.strip()
        elif section == "description":
            description.append(raw)
        elif not line or _is_dashes(line):
            continue
        elif section == "google" and indented:
            depth = len(raw) - len(raw.lstrip())
            match = _GOOGLE_ARG.match(line)
            if match and (current is None or depth <= params_indent):
                current, params_indent = match.group(1), depth
                params[current] = match.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {line}".strip()
        elif section == "numpy" and not indented and (match := _NUMPY_ARG.match(line)):
            current = match.group(1)
            params[current] = ""
        elif section in ("numpy", "sphinx") and indented and current is not None:
            params[current] = f"{params[current]} {line}".strip()
        elif not indented:
            section, current = "other", None
    return "\n".join(description).strip(), params


# ---- schema -------------------------------------------------------------------------------------------------------


def _tidy(schema: Any) -> Any:
    """Drop pydantic's generated titles and close every object to unknown keys (required by strict tool calls)."""
    if isinstance(schema, dict):
        tidy = {key: _tidy(value) for key, value in schema.items() if not (key == "title" and isinstance(value, str))}
        if tidy.get("type") == "object" and "properties" in schema:
            tidy["additionalProperties"] = False
        return tidy
    if isinstance(schema, list):
        return [_tidy(value) for value in schema]
    return schema


@dataclass(frozen=True, slots=True)
class Tool:
    """One registered tool: its wire spec and how to run it."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool
    function: Callable[..., Any]
    arguments: type[BaseModel]
    takes_state: bool
    is_async: bool
    thread: bool  # a sync function run in a worker thread (it may block; it can then time out)
    timeout: float | None

    def spec(self) -> dict[str, Any]:
        """The Responses-API function tool (`rollouts.process.formats.chat_tools` converts it for chat)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }

    def parse(self, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
        """Keyword arguments for the function, or a ToolError that tells the model what is wrong."""
        if arguments is None or arguments == "":
            arguments = "{}"
        raw = _json_object(arguments, self.name) if isinstance(arguments, str) else arguments
        if not isinstance(raw, dict):
            raise ToolError(f"the arguments of {self.name} must be a JSON object, not {type(raw).__name__}")
        try:
            validated = self.arguments.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolError(f"invalid arguments for {self.name}: {problems}") from None
        return dict(validated.__dict__)  # its fields, and nothing else: extra="forbid"

    @property
    def inline(self) -> bool:
        """A cheap sync tool: it runs to its end when called (no await, no thread), so `run_now` may call it."""
        return not self.is_async and not self.thread

    def _kwargs(self, arguments: str | dict[str, Any] | None, state: Any) -> dict[str, Any]:
        kwargs = self.parse(arguments)
        if self.takes_state:
            kwargs[STATE_PARAMETER] = state
        return kwargs

    def run_now(self, arguments: str | dict[str, Any] | None, state: Any = None) -> str:
        """`run` of an `inline` tool, without a coroutine: validate, call, render."""
        return render(self.function(**self._kwargs(arguments, state)))

    async def run(self, arguments: str | dict[str, Any] | None, state: Any = None) -> str:
        """Validate, call (awaiting an async tool, threading a blocking one) and render the result as text."""
        if self.inline:  # cheap sync tools run inline: no thread hop per call
            return self.run_now(arguments, state)
        kwargs = self._kwargs(arguments, state)
        call = self.function(**kwargs) if self.is_async else asyncio.to_thread(self.function, **kwargs)
        if self.timeout is None:
            return render(await call)
        try:
            async with asyncio.timeout(self.timeout):
                return render(await call)
        except TimeoutError:
            raise ToolError(f"{self.name} timed out after {self.timeout:g} s") from None


def _json_object(text: str, tool: str) -> Any:
    """`json.loads(text)`, by pydantic's parser (~10x faster; the same values, NaN, Infinity and big integers
    included) when it can: what it refuses (bad JSON, lone surrogates) goes to `json`, which reads the surrogates as
    ever and words the error."""
    try:
        return pydantic_core.from_json(text)
    except ValueError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(f"the arguments of {tool} are not valid JSON ({exc.msg} at position {exc.pos})") from None


def render(value: Any) -> str:
    """A tool's result as the text the model reads."""
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value, fallback=str).decode()


def tool_from_function(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    thread: bool = False,
    timeout: float | None = None,
) -> Tool:
    """Build a Tool from a function's signature and docstring (see the module docstring)."""
    name = name or function.__name__
    if not _TOOL_NAME.match(name):
        raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"tool {name}: timeout must be positive")
    target = inspect.unwrap(function)
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(getattr(target, "__call__", None))  # noqa: B004 (the method itself, not a callable check)
    if thread and is_async:
        raise ValueError(f"tool {name}: thread=True is for blocking sync functions, not async ones")
    signature = inspect.signature(function)
    try:
        hints = get_type_hints(target, include_extras=True)
    except Exception as exc:  # a forward reference that cannot be resolved
        raise ValueError(f"tool {name}: cannot resolve its type hints ({exc})") from exc
    summary, docs = parse_docstring(function.__doc__)
    fields: dict[str, Any] = {}
    takes_state = False
    for param in signature.parameters.values():
        if param.name == STATE_PARAMETER:
            takes_state = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ValueError(
                f"tool {name}: parameter {param.name!r} must be a named parameter (no *args, **kwargs or /)"
            )
        annotation = hints.get(param.name, Any)
        default = param.default
        if isinstance(default, FieldInfo):
            info = copy.copy(default)  # the description filled in below must not leak into the caller's object
        else:
            info = FieldInfo.from_annotated_attribute(annotation, ... if default is param.empty else default)
            annotation = info.annotation if info.annotation is not None else annotation
        if info.description is None and docs.get(param.name):
            info.description = docs[param.name]
        fields[param.name] = (annotation, info)
    model = create_model(
        f"{name}_arguments", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    try:
        schema = _tidy(model.model_json_schema())
    except Exception as exc:  # pydantic cannot express a parameter type as JSON schema
        raise ValueError(f"tool {name}: its parameters have no JSON schema ({exc})") from exc
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False
    strict = all(info.is_required() for _, info in fields.values())
    return Tool(
        name=name,
        description=description if description is not None else summary,
        parameters=schema,
        strict=strict,
        function=function,
        arguments=model,
        takes_state=takes_state,
        is_async=is_async,
        thread=thread,
        timeout=timeout,
    )


class ToolRegistry:
    """An ordered set of tools. The first tool is listed first to the model."""

    def __init__(self, tools: Iterable[Callable[..., Any] | Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.add(item)

    def add(self, function: Callable[..., Any] | Tool, **options: Any) -> Tool:
        built = function if isinstance(function, Tool) else tool_from_function(function, **options)
        if built.name in self._tools:
            raise ValueError(f"a tool named {built.name!r} is already registered")
        self._tools[built.name] = built
        return built

    def tool(self, function: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorator: `@registry.tool` or `@registry.tool(name=..., thread=True, timeout=5)`; returns the function."""
        if function is None:
            return functools.partial(self.tool, **options)
        self.add(function, **options)
        return function

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def inline(self, name: str) -> Tool | None:
        """The tool `name` when it is `inline`, else None (unknown names included: `get` words their error)."""
        tool = self._tools.get(name)
        return tool if tool is not None and tool.inline else None

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            raise ToolError(f"there is no tool named {name!r} (available: {known})")
        return tool

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._tools.values()]

    async def call(self, name: str, arguments: str | dict[str, Any] | None, state: Any = None) -> str:
        return await self.get(name).run(arguments, state)

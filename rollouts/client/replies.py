"""Shape checks of model replies: a 2xx body must have the fields and types the parsers and verifiers rely on.

A reply that passes is safe to read with plain indexing downstream; one that does not raises `ResponseParseError`
naming the field, and the client retries it like a 5xx. Harmless variants are normalised in place: chat `content`
given as a list of text parts becomes one string, tool-call `arguments` given as an object become JSON text.
"""

from __future__ import annotations

import json
from typing import Any

from rollouts.errors import ResponseParseError


def _kind(value: Any) -> str:
    return "null or missing" if value is None else f"{type(value).__name__} {_peek(value, 60)}"


def _peek(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _fail(message: str) -> ResponseParseError:
    return ResponseParseError(message, retryable=True)


def _optional(container: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> None:
    value = container.get(key)
    if value is not None and (isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds)):
        raise _fail(f"`{where}{key}` is {_kind(value)}, expected {' or '.join(k.__name__ for k in kinds)}")


def _text_parts(parts: list[Any], where: str) -> str:
    texts = []
    for index, part in enumerate(parts):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str):
            raise _fail(f"`{where}[{index}]` is not a text part: {_peek(part, 80)}")
        texts.append(text)
    return "".join(texts)


def _arguments(holder: dict[str, Any], where: str) -> None:
    arguments = holder.get("arguments")
    if isinstance(arguments, dict):
        holder["arguments"] = json.dumps(arguments, ensure_ascii=False)
    elif arguments is not None and not isinstance(arguments, str):
        raise _fail(f"`{where}arguments` is {_kind(arguments)}, expected a JSON string")


def _usage(data: dict[str, Any], keys: tuple[str, ...]) -> None:
    usage = data.get("usage")
    if usage is None:
        return
    if not isinstance(usage, dict):
        raise _fail(f"`usage` is {_kind(usage)}, expected an object")
    for key in keys:
        _optional(usage, key, (int,), "usage.")


def check_chat(data: dict[str, Any]) -> None:
    """A Chat Completions reply: `choices[0].message` an object, its text, reasoning and tool calls well typed."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(
            f"chat completion without choices[0] (`choices` is {_kind(choices) if choices != [] else 'empty'}): "
            f"{_peek(data)}"
        )
    choice = choices[0]
    if not isinstance(choice, dict):
        raise _fail(f"`choices[0]` is {_kind(choice)}, expected an object")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _fail(f"`choices[0].message` is {_kind(message)}, expected an object")
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = _text_parts(content, "choices[0].message.content")
    else:
        _optional(message, "content", (str,), "choices[0].message.")
    for key in ("reasoning_content", "reasoning"):
        _optional(message, key, (str,), "choices[0].message.")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _fail(f"`choices[0].message.tool_calls` is {_kind(calls)}, expected a list")
        for index, call in enumerate(calls):
            where = f"choices[0].message.tool_calls[{index}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _fail(f"`{where}` needs a `function` object with a string `name`: {_peek(call, 120)}")
            _optional(call, "id", (str,), f"{where}.")
            _arguments(function, f"{where}.function.")
    _optional(choice, "finish_reason", (str,), "choices[0].")
    _optional(data, "created", (int, float), "")
    _usage(data, ("prompt_tokens", "completion_tokens"))


def check_responses(data: dict[str, Any]) -> None:
    """A Responses-API reply: `output` a list of typed items whose text and calls are well typed."""
    output = data.get("output")
    if not isinstance(output, list):
        raise _fail(f"Responses API reply without an `output` list (it is {_kind(output)}): {_peek(data)}")
    for index, item in enumerate(output):
        where = f"output[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise _fail(f"`{where}` is not an item with a string `type`: {_peek(item, 120)}")
        kind = item["type"]
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                _text_parts(
                    [p for p in content if not (isinstance(p, dict) and p.get("type") == "refusal")], f"{where}.content"
                )
            elif not isinstance(content, str):
                raise _fail(f"`{where}.content` is {_kind(content)}, expected a list of text parts")
        elif kind == "function_call":
            if not isinstance(item.get("name"), str):
                raise _fail(f"`{where}` is a function_call without a string `name`")
            _optional(item, "call_id", (str,), f"{where}.")
            _arguments(item, f"{where}.")
    _optional(data, "status", (str,), "")
    _optional(data, "incomplete_details", (dict,), "")
    _optional(data, "created_at", (int, float), "")
    _usage(data, ("input_tokens", "output_tokens"))

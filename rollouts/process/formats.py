"""Message conversion: Responses-API items -> chat messages (assistant tool_calls, tool messages) and chat tools.

Two flavours of the same conversation:
- "openai": what OpenAI's fine-tuning formats take: tool-call `arguments` stay a JSON string, a tool result is
  `{"role": "tool", "tool_call_id", "content"}`.
- "trl": what Hugging Face chat templates (and so TRL) take: `arguments` is an object, a tool result also names its
  tool: `{"role": "tool", "name", "tool_call_id", "content"}`.

Rules: `developer` becomes `system`; content parts are joined into one string; `reasoning` items are left out
(no chat format has a common field for them); consecutive `message` + `function_call` items of one model turn make one
assistant message; an assistant message with only tool calls has no `content` key.
"""

from __future__ import annotations

from typing import Any, Literal

from rollouts import records
from rollouts.records import dumps


Flavor = Literal["openai", "trl"]
Message = dict[str, Any]


class ConversionError(ValueError):
    """An item that cannot become a chat message."""


def loads(text: str | None) -> Any:
    return None if text is None else records.loads(text)


def content_text(content: Any) -> str:
    """A message's content as one string: a string as is, parts joined (text of text/input_text/output_text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "".join(texts)
    raise ConversionError(f"content must be a string or a list of parts, got {type(content).__name__}")


def to_messages(items: Any, default_role: str = "assistant") -> list[Message]:
    """Chat messages (openai flavour) for a list of Responses input or output items."""
    if not isinstance(items, list):
        raise ConversionError("items must be a list")
    messages: list[Message] = []
    turn: Message | None = None  # the open assistant message of the current model turn
    for item in items:
        if not isinstance(item, dict):
            raise ConversionError(f"item must be an object, got {type(item).__name__}")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role") or default_role
            role = "system" if role == "developer" else role
            text = content_text(item.get("content"))
            if role == "assistant" and turn is not None and "content" not in turn:
                turn["content"] = text
                continue
            message: Message = {"role": role, "content": text}
            messages.append(message)
            turn = message if role == "assistant" else None
        elif kind == "function_call":
            if turn is None:
                turn = {"role": "assistant"}
                messages.append(turn)
            name = item.get("name")
            if not isinstance(name, str):
                raise ConversionError("function_call without a name")
            arguments = item.get("arguments")
            arguments = "{}" if arguments is None else arguments if isinstance(arguments, str) else dumps(arguments)
            call_id = item.get("call_id") or item.get("id")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            turn.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            turn = None
            output = item.get("output")
            text = output if isinstance(output, str) else content_text(output) if isinstance(output, list) else dumps(output)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise ConversionError(f"unsupported item type {kind!r}")
    return messages


def tool_names(messages: list[Message], names: dict[str, str] | None = None) -> dict[str, str]:
    """call_id -> tool name for every tool call in `messages` (added to `names`)."""
    names = {} if names is None else names
    for message in messages:
        for call in message.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
    return names


def to_trl(messages: list[Message], names: dict[str, str]) -> list[Message]:
    """The trl flavour of openai-flavour messages: arguments as objects, tool results named. Same list if no tools."""
    if not any("tool_calls" in m or m["role"] == "tool" for m in messages):
        return messages
    out: list[Message] = []
    for message in messages:
        if "tool_calls" in message:
            calls = [{**c, "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}} for c in message["tool_calls"]]
            message = {**message, "tool_calls": calls}
        elif message["role"] == "tool":
            name = names.get(message["tool_call_id"])
            head = {"role": "tool", "name": name} if name else {"role": "tool"}
            message = {**head, "tool_call_id": message["tool_call_id"], "content": message["content"]}
        out.append(message)
    return out


def _arguments(arguments: str) -> Any:
    try:
        return loads(arguments)
    except ValueError:
        return arguments  # not JSON: keep the text, templates print it as is


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Responses tools (`{"type": "function", "name", "parameters", ...}`) in Chat Completions form."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise ConversionError("tools must be a list")
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise ConversionError("a tool must be an object")
        if tool.get("type") == "function" and "function" not in tool:
            fields = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
            out.append({"type": "function", "function": fields})
        else:
            out.append(tool)
    return out


def prompt_text(messages: list[Message]) -> str:
    """The prompt as plain text for string formats: message contents joined by blank lines."""
    return "\n\n".join(m["content"] for m in messages if isinstance(m.get("content"), str) and m["content"])


def completion_text(messages: list[Message]) -> str:
    """The final assistant text of a completion (tool calls are not representable as plain text)."""
    for message in reversed(messages):
        if message.get("role") == "assistant" and message.get("content"):
            return message["content"]
    return ""


class Conversation:
    """One rollout converted once: prompt and completion in the openai flavour, the trl copy made on demand."""

    __slots__ = ("_prompt", "_completion", "_tools", "_trl")

    def __init__(self, prompt: list[Message], output: str, tools: list[dict[str, Any]] | None) -> None:
        self._prompt = prompt
        self._completion = to_messages(loads(output))
        self._tools = tools
        self._trl: tuple[list[Message], list[Message]] | None = None

    def _trl_pair(self) -> tuple[list[Message], list[Message]]:
        if self._trl is None:
            names = tool_names(self._completion, tool_names(self._prompt))
            self._trl = (to_trl(self._prompt, names), to_trl(self._completion, names))
        return self._trl

    def prompt(self, flavor: Flavor) -> list[Message]:
        return self._prompt if flavor == "openai" else self._trl_pair()[0]

    def completion(self, flavor: Flavor) -> list[Message]:
        return self._completion if flavor == "openai" else self._trl_pair()[1]

    def tools(self) -> list[dict[str, Any]] | None:
        return self._tools


def prompt_messages(prompt: str) -> list[Message]:
    """Chat messages for a frame `prompt` (a JSON list of input items; a JSON string is one user message)."""
    items = loads(prompt)
    return [{"role": "user", "content": items}] if isinstance(items, str) else to_messages(items, default_role="user")

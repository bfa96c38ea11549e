"""Responses-API items -> Chat Completions messages: the one conversion behind model requests and training files.

Rules (docs/training-files.md, "Outputs"):
- `instructions` (the Responses-API system prompt) becomes a leading `system` message; `developer` becomes `system`.
- A message's content is one string when it holds only text; with images it stays a list of parts, `text` and
  `image_url` (`{"url", "detail"}`) as in OpenAI's vision format. Parts that no chat format carries (files, audio,
  images by file id) are refused with a ConversionError rather than dropped silently.
- A model turn's text and its `function_call` items make one assistant message with `tool_calls`; such a message
  always has a `content` string ("" when the turn has no text): chat templates index `message['content']` (DeepSeek-V3
  concatenates it) and transformers drops `None` values before rendering, so an absent or null content breaks them.
- `function_call_output` becomes `{"role": "tool", "tool_call_id", "content"}`; chat-style input messages
  (`tool_calls` on assistant messages, `tool` messages) are kept as they are.
- `reasoning` items are left out: no chat format has a common field for them.
"""

from __future__ import annotations

from typing import Any

import orjson

from rollouts.errors import ConversionError

Message = dict[str, Any]
TEXT_PARTS = frozenset({"text", "input_text", "output_text", "summary_text"})


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _image_part(part: dict[str, Any]) -> dict[str, Any]:
    url = part.get("image_url")
    if isinstance(url, dict):  # a chat-style part already
        detail = url.get("detail") or part.get("detail")
        url = url.get("url")
    else:
        detail = part.get("detail")
    if not isinstance(url, str) or not url:
        raise ConversionError(
            "an input_image without an image_url (a file_id image) cannot be carried into chat messages"
        )
    image: dict[str, Any] = {"url": url}
    if detail in ("low", "high", "auto"):
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def content_value(content: Any) -> str | list[dict[str, Any]]:
    """A message's content: one string when it is text only, else `text` / `image_url` parts in order."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ConversionError(f"content must be a string or a list of parts, got {type(content).__name__}")
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict):
            raise ConversionError(f"a content part must be an object, got {type(part).__name__}")
        kind = part.get("type")
        if kind in ("input_image", "image_url"):
            parts.append(_image_part(part))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif (kind in TEXT_PARTS or kind is None) and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise ConversionError(f"content part of type {kind!r} cannot be carried into chat messages")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def content_text(content: Any) -> str:
    """The text of a content value (image parts contribute nothing)."""
    value = content_value(content)
    return value if isinstance(value, str) else "".join(p["text"] for p in value if p["type"] == "text")


def _arguments_text(arguments: Any) -> str:
    return "{}" if arguments is None else arguments if isinstance(arguments, str) else _dumps(arguments)


def _chat_message(item: dict[str, Any], role: str) -> Message:
    """A chat-style message item kept as it is (assistant `tool_calls`, `tool` results), content normalised."""
    message: Message = {"role": role, "content": content_value(item.get("content"))}
    if role == "assistant" and item.get("tool_calls"):
        calls = []
        for call in item["tool_calls"]:
            fn = call.get("function") or {}
            if not isinstance(fn.get("name"), str):
                raise ConversionError("a tool call without a function name")
            calls.append(
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": _arguments_text(fn.get("arguments"))},
                }
            )
        message["tool_calls"] = calls
    if role == "tool":
        message["tool_call_id"] = item.get("tool_call_id")
        if isinstance(item.get("name"), str):
            message["name"] = item["name"]
    return message


def to_messages(
    items: Any, default_role: str = "assistant", instructions: str | None = None, reasoning: bool = False
) -> list[Message]:
    """Chat messages (OpenAI form: tool-call `arguments` as JSON text) for Responses input or output items.

    With `reasoning`, a reasoning item's text becomes `reasoning_content` on the assistant message of its turn (what
    chat templates such as Qwen3's render back), so the context of the next call is the one the model generated;
    training formats leave reasoning out."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ConversionError("items must be a list")
    messages: list[Message] = [{"role": "system", "content": instructions}] if instructions else []
    turn: Message | None = None  # the open assistant message of the current model turn
    turn_has_text = False
    thought: str | None = None  # reasoning text waiting for its turn's assistant message
    for item in items:
        if not isinstance(item, dict):
            raise ConversionError(f"item must be an object, got {type(item).__name__}")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role") or default_role
            role = "system" if role == "developer" else role
            if role == "assistant" and turn is not None and not turn_has_text and not item.get("tool_calls"):
                turn["content"] = content_value(item.get("content"))  # text after the calls of the same turn
                turn_has_text = True
                continue
            message = _chat_message(item, role)
            if role == "assistant" and thought is not None:
                message["reasoning_content"], thought = thought, None
            messages.append(message)
            turn = message if role == "assistant" else None
            turn_has_text = bool(message["content"])
        elif kind == "function_call":
            if turn is None:
                turn = {"role": "assistant", "content": ""}
                if thought is not None:
                    turn["reasoning_content"], thought = thought, None
                messages.append(turn)
                turn_has_text = False
            name = item.get("name")
            if not isinstance(name, str):
                raise ConversionError("function_call without a name")
            call_id = item.get("call_id") or item.get("id")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": _arguments_text(item.get("arguments"))},
            }
            turn.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            turn = None
            output = item.get("output")
            text = (
                output
                if isinstance(output, str)
                else content_value(output)
                if isinstance(output, list)
                else _dumps(output)
            )
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            if reasoning:
                text = "".join(p.get("text", "") for p in item.get("summary") or [] if isinstance(p, dict))
                thought = (thought or "") + text if text else thought
            continue
        else:
            raise ConversionError(f"unsupported item type {kind!r}")
    return messages


def items_to_chat(items: list[dict[str, Any]], instructions: str | None = None) -> list[Message]:
    """The request form of a rollout's context so far: input items then produced items (default role `user`)."""
    return to_messages(items, default_role="user", instructions=instructions, reasoning=True)


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Responses tools (`{"type": "function", "name", "parameters", ...}`) in Chat Completions form.

    `strict` is kept only as a boolean: NeMo Gym rows carry `strict: null`, which OpenAI's tool schema refuses.
    """
    if not tools:
        return None
    if not isinstance(tools, list):
        raise ConversionError("tools must be a list")
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise ConversionError("a tool must be an object")
        if tool.get("type") == "function" and "function" not in tool:
            fields = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
            if isinstance(tool.get("strict"), bool):
                fields["strict"] = tool["strict"]
            out.append({"type": "function", "function": fields})
        elif (
            isinstance(tool.get("function"), dict)
            and "strict" in tool["function"]
            and not isinstance(tool["function"]["strict"], bool)
        ):
            out.append({**tool, "function": {k: v for k, v in tool["function"].items() if k != "strict"}})
        else:
            out.append(tool)
    return out


def has_images(messages: list[Message]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"]) for m in messages
    )

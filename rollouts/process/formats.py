"""Training-file flavours of the one Responses -> chat conversion (rollouts.client.chat): OpenAI and Hugging Face/TRL.

- "openai": what OpenAI's fine-tuning formats take: tool-call `arguments` stay a JSON string, a tool result is
  `{"role": "tool", "tool_call_id", "content"}`, images are `image_url` parts.
- "trl": what Hugging Face chat templates (and so TRL, NeMo RL) take: `arguments` is an object (the documented
  transformers form; TRL's training templates render it with `tojson`), a tool result also names its tool, and a
  message with images has `text` / `image` (`{"type": "image", "image": url}`) parts.
"""

from __future__ import annotations

from typing import Any, Literal

from rollouts import records
from rollouts.client.chat import Message, chat_tools, content_text, has_images, to_messages
from rollouts.errors import ConversionError

__all__ = [
    "Conversation",
    "ConversionError",
    "chat_tools",
    "completion_text",
    "content_text",
    "ends_with_assistant",
    "has_images",
    "has_tool_exchange",
    "loads",
    "prompt_messages",
    "prompt_text",
    "to_messages",
]

Flavor = Literal["openai", "trl"]
PROMPT_SEPARATOR = "\n\n"


def loads(text: str | None) -> Any:
    return None if text is None else records.loads(text)


def tool_names(messages: list[Message], names: dict[str, str] | None = None) -> dict[str, str]:
    """call_id -> tool name for every tool call in `messages` (added to `names`)."""
    names = {} if names is None else names
    for message in messages:
        for call in message.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
    return names


def _trl_content(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [{"type": "image", "image": p["image_url"]["url"]} if p["type"] == "image_url" else p for p in content]


def to_trl(messages: list[Message], names: dict[str, str]) -> list[Message]:
    """The trl flavour of openai-flavour messages. The same list when there are no tools and no images."""
    if not any("tool_calls" in m or m["role"] == "tool" or isinstance(m.get("content"), list) for m in messages):
        return messages
    out: list[Message] = []
    for message in messages:
        message = {**message, "content": _trl_content(message.get("content"))}
        if "tool_calls" in message:
            message["tool_calls"] = [
                {**c, "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}}
                for c in message["tool_calls"]
            ]
        elif message["role"] == "tool":
            name = message.get("name") or names.get(message["tool_call_id"])
            head = {"role": "tool", "name": name} if name else {"role": "tool"}
            message = {**head, "tool_call_id": message["tool_call_id"], "content": message["content"]}
        out.append(message)
    return out


def _arguments(arguments: str) -> Any:
    try:
        return loads(arguments)
    except ValueError:
        return arguments  # not JSON: keep the text, templates print it as is


def prompt_text(messages: list[Message]) -> str:
    """The prompt as plain text for string formats: message texts joined by blank lines, ending with one.

    TRL builds the standard form of a conversation as `prompt` = everything before the model's first token and
    `chosen` = what the model wrote, and tokenizes `prompt + chosen`: the joining text belongs to the prompt, so the
    completion is the model's text as is and the two never glue together.
    """
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str) and m["content"]]
    return PROMPT_SEPARATOR.join(texts) + PROMPT_SEPARATOR if texts else ""


def completion_text(messages: list[Message]) -> str:
    """The final assistant text of a completion."""
    for message in reversed(messages):
        if message.get("role") == "assistant" and message.get("content"):
            return content_text(message["content"])
    return ""


def has_tool_exchange(messages: list[Message]) -> bool:
    """Whether the messages hold a tool call or a tool result (plain-text formats have no form for either)."""
    return any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def ends_with_assistant(messages: list[Message]) -> bool:
    """Whether the conversation ends with an assistant turn that says or calls something (trainers need one)."""
    if not messages or messages[-1].get("role") != "assistant":
        return False
    last = messages[-1]
    return bool(last.get("tool_calls")) or bool(last.get("content"))


class Conversation:
    """One rollout converted once: prompt and completion in the openai flavour, the trl copy made on demand."""

    __slots__ = ("_prompt", "_completion", "_tools", "_trl", "parallel_tool_calls")

    def __init__(
        self,
        prompt: list[Message],
        output: str,
        tools: list[dict[str, Any]] | None,
        parallel_tool_calls: bool | None = None,
    ) -> None:
        completion = to_messages(loads(output))
        if not prompt:  # an `input: []` row: its trajectory, prompt included, is all in the output
            cut = next((i for i, m in enumerate(completion) if m["role"] == "assistant"), len(completion))
            prompt, completion = completion[:cut], completion[cut:]
        self._prompt = prompt
        self._completion = completion
        self._tools = tools
        self._trl: tuple[list[Message], list[Message]] | None = None
        self.parallel_tool_calls = parallel_tool_calls

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

    def has_images(self) -> bool:
        return has_images(self._prompt) or has_images(self._completion)

    def complete(self) -> bool:
        return ends_with_assistant(self._completion)


def prompt_messages(prompt: str) -> list[Message]:
    """Chat messages for a frame `prompt` (a JSON list of input items; a JSON string is one user message)."""
    items = loads(prompt)
    return to_messages(items, default_role="user")

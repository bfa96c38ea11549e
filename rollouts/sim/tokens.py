"""The simulated model's word-level tokenizer and text template: usage counts of requests without token ids, and
the text that seeds every answer (requests with token ids get real BPE ids from bpe.py).

Tokens are words, single punctuation characters and a few special markers; whitespace is dropped. Ids are stable
(crc32 of the token text), so a conversation re-sent with the previous answer appended tokenizes to the previous
prompt + generation followed by the new turn, as with a real model whose template round-trips its own output.

A turn renders as

    <|im_start|>ROLE
    <think>
    REASONING
    </think>
    CONTENT
    <tool_call>
    NAME ARGUMENTS
    </tool_call><|im_end|>

and a prompt ends with `<|im_start|>assistant`; a generation is the assistant turn's body up to its `<|im_end|>`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

VOCAB_SIZE = 50_000
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# Special tokens sit just above the ordinary vocabulary, so they never collide with a word's id.
SPECIAL_IDS = {
    token: VOCAB_SIZE + index
    for index, token in enumerate((IM_START, IM_END, THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE))
}
_TOKEN_RE = re.compile(r"<\|im_(?:start|end)\|>|</?think>|</?tool_call>|\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # a JSON string, exactly as the client sees it


def as_calls(calls: ToolCall | Sequence[ToolCall] | None) -> tuple[ToolCall, ...]:
    """One call, several or none, as a tuple (answers and generations hold every call of a turn)."""
    if calls is None:
        return ()
    return (calls,) if isinstance(calls, ToolCall) else tuple(calls)


@dataclass(slots=True)
class Turn:
    """One message of a conversation, normalised from either API."""

    role: str
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@lru_cache(maxsize=1 << 16)  # words repeat across requests; the cache halves tokenization time
def token_id(token: str) -> int:
    special = SPECIAL_IDS.get(token)
    if special is not None:
        return special
    return zlib.crc32(token.encode()) % VOCAB_SIZE


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def encode(text: str) -> list[int]:
    return [token_id(token) for token in _TOKEN_RE.findall(text)]


def render_body(content: str, reasoning: str = "", tool_calls: Sequence[ToolCall] | None = None) -> str:
    """The text between a turn's role line and its `<|im_end|>`."""
    parts: list[str] = []
    if reasoning:
        parts.append(f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n")
    parts.append(content)
    for call in tool_calls or ():
        parts.append(f"\n{CALL_OPEN}\n{call.name} {call.arguments}\n{CALL_CLOSE}")
    return "".join(parts)


def render_prompt(turns: list[Turn], tool_names: list[str]) -> str:
    parts: list[str] = []
    if tool_names:
        parts.append(f"{IM_START}system\n# Tools\n{' '.join(tool_names)}{IM_END}\n")
    for turn in turns:
        body = render_body(turn.content, turn.reasoning, turn.tool_calls)
        parts.append(f"{IM_START}{turn.role}\n{body}{IM_END}\n")
    parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Generation:
    """What the model emitted: the parts it returns and the tokens it counts, possibly cut at `max_tokens`.

    `ids` are set when the real tokenizer encoded it (bpe.py); otherwise ids derive from the word tokens.
    """

    reasoning: str
    content: str
    tool_calls: tuple[ToolCall, ...]  # in the order generated; empty for a text answer or a cut generation
    tokens: list[str]
    truncated: bool
    ids: list[int] | None = None
    reasoning_tokens: int | None = None  # counted by the real tokenizer; None: count the reasoning's words

    @property
    def tool_call(self) -> ToolCall | None:
        """The first call, if any."""
        return self.tool_calls[0] if self.tool_calls else None

    @property
    def token_ids(self) -> list[int]:
        if self.ids is not None:
            return self.ids
        return [token_id(token) for token in self.tokens]


def _cut(text: str, keep: int) -> tuple[str, int]:
    """The prefix of `text` holding at most `keep` tokens, and how many tokens it holds."""
    end = 0
    count = 0
    for match in _TOKEN_RE.finditer(text):
        if count == keep:
            break
        end = match.end()
        count += 1
    return text[:end], count


def generate(
    reasoning: str, content: str, tool_calls: ToolCall | Sequence[ToolCall] | None, max_tokens: int | None
) -> Generation:
    """Tokenize an answer as the template renders it and truncate it to `max_tokens` generated tokens."""
    calls = as_calls(tool_calls)
    tokens = tokenize(render_body(content, reasoning, calls))
    tokens.append(IM_END)
    if max_tokens is None or len(tokens) <= max_tokens:
        return Generation(reasoning, content, calls, tokens, truncated=False)
    budget = max(max_tokens, 0)
    kept_reasoning, kept_content = "", ""
    if reasoning:
        budget -= 1  # <think>
        kept_reasoning, used = _cut(reasoning, max(budget, 0))
        budget -= used + 1  # </think>
    if budget > 0:
        kept_content, _ = _cut(content, budget)
    # A turn cut short makes no tool calls: drop them, keep the text before them, finish with "length".
    return Generation(kept_reasoning, kept_content, (), tokens[: max(max_tokens, 0)], truncated=True)

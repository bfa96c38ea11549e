"""The simulated server's real tokenizer (a byte-level BPE shipped in `tokenizer.json`) and Jinja chat template.

Used only for requests that ask for token ids or log-probabilities: the prompt ids are what a server computes, the
template rendered from the messages and encoded; the generation ids encode the answer's text. Requests without them
never load this module: they are counted in words (`tokens.py`) and cost what they did before (~245 us of server CPU
per request in bench/sim_server_throughput.py; ~355 us with token ids).

Drift options make consecutive calls of one conversation non-contiguous the way real stacks do:

- `retokenize_args`: the model emits its tool-call arguments with a non-canonical tokenization (each canonical token
  split into its bytes); the next prompt re-encodes the same text canonically. Same text, other ids.
- `strip_think`: the template drops the `<think>` reasoning of earlier assistant turns (Qwen3's template does this for
  turns before the last user message; here for every earlier turn). Earlier content changed.
- `turn_token`: the template closes earlier assistant turns with a `<|turn_end|>` token the model never generates.
  Special tokens differ at the turn boundary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jinja2
import regex
from tokenizers import Tokenizer

from rollouts.sim.tokens import Generation, ToolCall, Turn, as_calls

HERE = Path(__file__).resolve().parent
TOKENIZER_PATH = HERE / "tokenizer.json"
TEMPLATE_PATH = HERE / "chat_template.jinja"
IM_END = "<|im_end|>"
THINK_OPEN, THINK_CLOSE, CALL_OPEN = "<think>\n", "\n</think>\n", "<tool_call>"
# The ByteLevel pre-tokenizer's pattern (GPT-2's, as in tokenizers' byte_level.rs). Words split by it are encoded
# independently, so a per-word cache is exact: 8 us instead of 25 us for a 20-token answer on the dev machine. On
# ASCII text the same pattern in `re` is ~2.5x faster than `regex`'s Unicode classes.
PRETOKEN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
PRETOKEN_ASCII = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII
)
_WORD_CACHE, _TEXT_CACHE = 1 << 16, 1 << 14  # entries; a few tens of MB at most


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map, the alphabet of the ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_chars()


@dataclass(frozen=True)
class Drift:
    retokenize_args: bool = False
    strip_think: bool = False
    turn_token: bool = False


def load_tokenizer() -> Tokenizer:
    """The shipped tokenizer (also what tests and `rollouts tokens --tokenizer` decode with)."""
    return Tokenizer.from_file(str(TOKENIZER_PATH))


class ChatTokenizer:
    """Renders conversations with the chat template and encodes them; one per server, reused across requests."""

    def __init__(self, drift: Drift | None = None) -> None:
        self.drift = drift or Drift()
        self.tokenizer = load_tokenizer()
        environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
        self.template = environment.from_string(TEMPLATE_PATH.read_text())
        empty = {"messages": [], "tools": [], "add_generation_prompt": False, "strip_think": False, "turn_token": False}
        self.body_macro = self.template.make_module(empty).assistant_body  # type: ignore[attr-defined]
        added = self.tokenizer.get_added_tokens_decoder()
        self.special = {token.content: token_id for token_id, token in added.items()}
        self.im_end = self.special[IM_END]
        self._split = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self.special, key=len, reverse=True)) + ")"
        )
        # Logprob entries show each token's own text; decoded once for the whole vocabulary.
        self.pieces = [
            self.tokenizer.decode([i], skip_special_tokens=False) for i in range(self.tokenizer.get_vocab_size())
        ]
        self.model = self.tokenizer.model
        self._words: dict[str, list[int]] = {}
        self._texts: dict[str, list[int]] = {}  # whole texts between special tokens: role lines, system prompts, ...

    def encode(self, text: str) -> list[int]:
        """Exactly `tokenizer.encode(text).ids`: special tokens split the text, then each word is encoded alone."""
        ids: list[int] = []
        texts = self._texts
        for index, piece in enumerate(self._split.split(text)):
            if index % 2:
                ids.append(self.special[piece])
            elif piece:
                cached = texts.get(piece)
                if cached is None:
                    if len(texts) >= _TEXT_CACHE:
                        texts.clear()
                    cached = texts[piece] = self._encode_words(piece)
                ids.extend(cached)
        return ids

    def _encode_words(self, text: str) -> list[int]:
        ids: list[int] = []
        words = self._words
        for word in (PRETOKEN_ASCII if text.isascii() else PRETOKEN).findall(text):
            cached = words.get(word)
            if cached is None:
                if len(words) >= _WORD_CACHE:
                    words.clear()
                # the BPE model on the byte-mapped word: what encode() does for one word, ~2.5x cheaper
                mapped = "".join([BYTE_CHARS[b] for b in word.encode()])
                cached = words[word] = [token.id for token in self.model.tokenize(mapped)]
            ids.extend(cached)
        return ids

    def render(self, turns: list[Turn], tool_names: list[str]) -> str:
        messages = [_message(turn) for turn in turns]
        return self.template.render(
            messages=messages,
            tools=tool_names,
            add_generation_prompt=True,
            strip_think=self.drift.strip_think,
            turn_token=self.drift.turn_token,
        )

    def prompt_ids(self, turns: list[Turn], tool_names: list[str], truncate: int | None = None) -> list[int]:
        """The prompt's ids; `truncate` keeps the last N, as vLLM's `truncate_prompt_tokens` does."""
        ids = self.encode(self.render(turns, tool_names))
        return ids[-truncate:] if truncate is not None and len(ids) > truncate else ids

    def generation(
        self, reasoning: str, content: str, calls: ToolCall | Sequence[ToolCall] | None, max_tokens: int | None
    ) -> Generation:
        """The answer as the model emits it: the assistant body's ids and <|im_end|>, cut at `max_tokens`."""
        tool_calls = as_calls(calls)
        message = {
            "reasoning": reasoning,
            "content": content,
            "tool_calls": [{"name": call.name, "arguments": call.arguments} for call in tool_calls],
        }
        body = str(self.body_macro(message, False))
        if tool_calls and self.drift.retokenize_args:
            ids = self._split_arguments(body, [call.arguments for call in tool_calls])
        else:
            ids = self.encode(body)
        ids.append(self.im_end)
        truncated = max_tokens is not None and len(ids) > max_tokens
        if truncated:
            ids = ids[: max(max_tokens or 0, 0)]
            reasoning, content, tool_calls = self._parse(
                self.tokenizer.decode(ids, skip_special_tokens=False), reasoning
            )
        close = self.special[THINK_CLOSE.strip()]
        reasoning_tokens = (ids.index(close) + 1 if close in ids else len(ids)) if reasoning else 0
        tokens = [self.pieces[i] for i in ids]
        return Generation(reasoning, content, tool_calls, tokens, truncated, ids=ids, reasoning_tokens=reasoning_tokens)

    def _split_arguments(self, body: str, arguments: list[str]) -> list[int]:
        """Canonical ids, except that tokens overlapping any call's arguments are emitted byte by byte."""
        spans = []
        end = len(body)
        for text in reversed(arguments):  # each call's arguments, found from the end so earlier calls stay earlier
            start = body.rindex(text, 0, end)
            spans.append((start, start + len(text)))
            end = start
        encoding = self.tokenizer.encode(body, add_special_tokens=False)
        special = set(self.special.values())
        ids: list[int] = []
        for token_id, token, (lo, hi) in zip(encoding.ids, encoding.tokens, encoding.offsets, strict=True):
            inside = any(lo < stop and hi > start for start, stop in spans)
            if inside and len(token) > 1 and token_id not in special:
                # each byte is in the byte-level alphabet, so token_to_id never returns None here
                ids.extend(cast(int, self.tokenizer.token_to_id(char)) for char in token)
            else:
                ids.append(token_id)
        return ids

    @staticmethod
    def _parse(text: str, reasoning: str) -> tuple[str, str, tuple[()]]:
        """Reasoning and content of a generation cut short; a turn cut short makes no tool calls."""
        rest = text
        kept_reasoning = ""
        if reasoning:
            rest = text[len(THINK_OPEN) :] if text.startswith(THINK_OPEN) else ""
            if THINK_CLOSE in rest:
                kept_reasoning, rest = rest.split(THINK_CLOSE, 1)
            else:
                kept_reasoning, rest = rest.removesuffix("\n</think>").removesuffix("\n"), ""
        content = rest.split(CALL_OPEN, 1)[0].removesuffix("\n")
        return kept_reasoning, content, ()


def _message(turn: Turn) -> dict[str, Any]:
    return {
        "role": turn.role,
        "content": turn.content,
        "reasoning": turn.reasoning,
        "tool_calls": [{"name": call.name, "arguments": call.arguments} for call in turn.tool_calls],
    }

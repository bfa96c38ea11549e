"""Contiguity check of a rollout's model calls: where call k+1's prompt stops extending call k's prompt + generation,
and why.

For calls k and k+1, `expected` = prompt_k + generation_k and `actual` = prompt_{k+1}. They are contiguous when
`actual` starts with `expected`. Otherwise the break is located at the first differing offset n of `actual`, and the
edit there is measured: `expected[n:n+a]` was replaced by `actual[n:n+b]`, after which both agree again on a few
tokens (the shortest such edit; a or b may be 0). Classes, tried in this order:

1. truncation: `actual` is a proper prefix of `expected` (the prompt was cut short), or `actual` starts with a
   suffix of `expected` (its first tokens were dropped, as vLLM's `truncate_prompt_tokens` does).
2. With a tokenizer (anything with `decode(ids, skip_special_tokens=...)`):
   - retokenization: the text of call k's prompt + generation is a prefix of call k+1's prompt text (the history was
     kept, only its ids differ), or both sides of the edit are non-empty and decode to the same text;
   - retemplating: the sides differ only in special tokens (equal once special tokens are skipped);
   - history_rewritten: anything else (earlier content changed, e.g. a template that strips reasoning).
3. From the ids alone:
   - retemplating: a short edit (a, b <= 4) at the turn boundary: reaching the first generated token of call k, or
     covering its last one (the end-of-turn token);
   - retokenization: a replacement (a, b >= 1) inside the generated span (which may also be rewritten text: pass a
     tokenizer to tell them apart);
   - history_rewritten: anything else (a pure deletion or insertion, or an edit of earlier prompt tokens).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, Field

from rollouts.errors import TokenDataError

RETOKENIZATION, RETEMPLATING, HISTORY_REWRITTEN, TRUNCATION = (
    "retokenization",
    "retemplating",
    "history_rewritten",
    "truncation",
)
BREAK_KINDS = (RETOKENIZATION, RETEMPLATING, HISTORY_REWRITTEN, TRUNCATION)
ANCHOR = 4  # tokens both sides must agree on after an edit
WINDOW = 64  # the shorter side of an edit is at most this long; the longer one may be any length
BOUNDARY_EDIT = 4
MAX_EXAMPLES = 20


class Decoder(Protocol):
    """A tokenizer: `tokenizers.Tokenizer` and transformers tokenizers both fit."""

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One model call's token fields."""

    prompt: list[int]
    generation: list[int]
    logprobs: list[float] | None


@dataclass(frozen=True, slots=True)
class Break:
    call: int  # the call whose prompt breaks (>= 1)
    offset: int  # first differing position in that call's prompt
    kind: str
    expected: int  # tokens of the previous prompt + generation replaced at the break
    actual: int  # tokens of the new prompt in their place
    region: str  # "prompt" or "generation": where in the previous call's context the break starts


@dataclass(frozen=True, slots=True)
class RolloutCheck:
    calls: int
    breaks: tuple[Break, ...]

    @property
    def contiguous(self) -> bool:
        return not self.breaks


def _ids(value: Any, where: str) -> list[int]:
    # the container and its first element: scanning every id would cost more than the check itself
    if not isinstance(value, list) or (value and (not isinstance(value[0], int) or isinstance(value[0], bool))):
        raise TokenDataError(f"{where} is not a list of integer token ids")
    return value


def calls_of(row: Mapping[str, Any]) -> list[Call]:
    """The model calls of a rollout row (ours or NeMo Gym's): the output items that carry `generation_token_ids`."""
    response = row.get("response")
    output = response.get("output") if isinstance(response, Mapping) else None
    calls: list[Call] = []
    for index, item in enumerate(output if isinstance(output, list) else ()):
        if not isinstance(item, Mapping) or item.get("generation_token_ids") is None:
            continue
        where = f"response.output[{index}]"
        generation = _ids(item["generation_token_ids"], f"{where}.generation_token_ids")
        prompt = _ids(item.get("prompt_token_ids"), f"{where}.prompt_token_ids")
        values = item.get("generation_log_probs")
        if values is not None:
            if not isinstance(values, list):
                raise TokenDataError(f"{where}.generation_log_probs is not a list of numbers")
            if len(values) != len(generation):
                raise TokenDataError(f"{where}: {len(generation)} generated ids but {len(values)} log-probabilities")
        calls.append(Call(prompt, generation, values))
    return calls


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _find(seq: Sequence[int], pattern: Sequence[int], start: int, stop: int) -> int | None:
    """The first p in [start, stop] with seq[p:p+len(pattern)] == pattern."""
    if not pattern:
        return None
    first, width = pattern[0], len(pattern)
    stop = min(stop, len(seq) - width)
    p = start
    while p <= stop:
        try:
            p = seq.index(first, p, stop + 1)
        except ValueError:
            return None
        if seq[p : p + width] == pattern:
            return p
        p += 1
    return None


def _left_truncation(expected: list[int], actual: list[int]) -> bool:
    """Whether `actual` starts with a suffix of `expected` of at least ANCHOR tokens (its head was dropped)."""
    if len(actual) < ANCHOR:
        return False
    d = 0
    while True:
        d = _find(expected, actual[:ANCHOR], d + 1, len(expected) - ANCHOR) or 0
        if not d:
            return False
        tail = len(expected) - d
        if tail <= len(actual) and expected[d:] == actual[:tail]:
            return True


def _edit(expected: list[int], actual: list[int], n: int) -> tuple[int, int]:
    """(a, b): the shortest edit at n after which `expected` and `actual` agree again."""
    best: tuple[int, int] | None = None
    rest_e, rest_a = len(expected) - n, len(actual) - n
    for b in range(min(WINDOW, rest_a) + 1):  # the anchor after b tokens of `actual`, found in `expected`
        anchor = actual[n + b : n + b + ANCHOR]
        if len(anchor) < ANCHOR or (best and b >= sum(best)):
            break
        limit = n + (sum(best) - b - 1 if best else rest_e)
        p = _find(expected, anchor, n, limit)
        if p is not None:
            best = (p - n, b)
    for a in range(min(WINDOW, rest_e - 1) + 1):  # the anchor after a tokens of `expected`, found in `actual`
        if best and a >= sum(best):
            break
        anchor = expected[n + a : n + a + ANCHOR]  # shorter at expected's end
        limit = n + (sum(best) - a - 1 if best else rest_a)
        p = _find(actual, anchor, n, limit)
        if p is not None and (best is None or a + p - n < sum(best)):
            best = (a, p - n)
    return best if best is not None else (rest_e, rest_a)


def _classify(
    previous: Call, expected: list[int], actual: list[int], n: int, a: int, b: int, tokenizer: Decoder | None
) -> str:
    if tokenizer is not None:
        old, new = expected[n : n + a], actual[n : n + b]
        # the edit window is found on ids, and a merge can shift it off the text boundary: judge the whole text first
        if tokenizer.decode(actual, skip_special_tokens=False).startswith(
            tokenizer.decode(expected, skip_special_tokens=False)
        ):
            return RETOKENIZATION
        if (
            old
            and new
            and tokenizer.decode(old, skip_special_tokens=False) == tokenizer.decode(new, skip_special_tokens=False)
        ):
            return RETOKENIZATION
        if tokenizer.decode(old, skip_special_tokens=True) == tokenizer.decode(new, skip_special_tokens=True):
            return RETEMPLATING
        return HISTORY_REWRITTEN
    start, last = len(previous.prompt), len(expected) - 1
    touches = n <= start <= n + a or n <= last < n + max(a, 1)
    if a <= BOUNDARY_EDIT and b <= BOUNDARY_EDIT and touches:
        return RETEMPLATING
    if a and b and n >= start:
        return RETOKENIZATION
    return HISTORY_REWRITTEN


def find_break(previous: Call, prompt: list[int], call: int, tokenizer: Decoder | None = None) -> Break | None:
    """The break between `previous` and the next call's `prompt`, or None when they are contiguous."""
    expected = previous.prompt + previous.generation
    n = _common_prefix(expected, prompt)
    if n == len(expected):
        return None
    region = "prompt" if n < len(previous.prompt) else "generation"
    if n == len(prompt) or _left_truncation(expected, prompt):
        return Break(call, n, TRUNCATION, len(expected) - n, len(prompt) - n, region)
    a, b = _edit(expected, prompt, n)
    return Break(call, n, _classify(previous, expected, prompt, n, a, b, tokenizer), a, b, region)


def check_calls(calls: Sequence[Call], tokenizer: Decoder | None = None) -> RolloutCheck:
    breaks = []
    for k in range(1, len(calls)):
        found = find_break(calls[k - 1], calls[k].prompt, k, tokenizer)
        if found is not None:
            breaks.append(found)
    return RolloutCheck(len(calls), tuple(breaks))


def check_rollout(row: Mapping[str, Any], tokenizer: Decoder | None = None) -> RolloutCheck | None:
    """The check of one rollout row; None when it has no token ids. Raises TokenDataError on malformed fields."""
    calls = calls_of(row)
    return check_calls(calls, tokenizer) if calls else None


class ContiguityMetrics(BaseModel):
    """Per-run contiguity figures (the profile's `tokens` section)."""

    rollouts: int = 0  # rows looked at
    with_token_ids: int = 0
    contiguous: int = 0  # rollouts with token ids whose calls are all contiguous
    broken: int = 0
    malformed: int = 0  # rows whose token fields could not be read
    multi_call: int = 0  # rollouts with token ids and more than one model call
    breaks: int = 0
    breaks_by_kind: dict[str, int] = Field(default_factory=dict)
    rollouts_by_first_break: dict[str, int] = Field(default_factory=dict)
    examples: list[str] = Field(default_factory=list)  # "rollout_id: call k at offset n: kind"

    def add(self, rollout_id: str, check: RolloutCheck | None) -> None:
        self.rollouts += 1
        if check is None:
            return
        self.with_token_ids += 1
        self.multi_call += check.calls > 1
        if check.contiguous:
            self.contiguous += 1
            return
        self.broken += 1
        self.breaks += len(check.breaks)
        kinds = Counter(self.breaks_by_kind) + Counter(b.kind for b in check.breaks)
        self.breaks_by_kind = {kind: kinds[kind] for kind in BREAK_KINDS if kinds[kind]}
        first = check.breaks[0]
        self.rollouts_by_first_break[first.kind] = self.rollouts_by_first_break.get(first.kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{rollout_id}: call {first.call} at offset {first.offset}: {first.kind}")

    def summary(self) -> str:
        """One line for the run summary."""
        if not self.with_token_ids:
            return "no token ids"
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.breaks_by_kind.items())
        return f"{self.contiguous} of {self.with_token_ids} rollouts contiguous" + (
            f"; breaks: {kinds}" if kinds else ""
        )

    def to_markdown(self) -> str:
        """The profile artifact's token section."""
        lines = ["## Token contiguity", "", "| | rollouts |", "| --- | ---: |"]
        for label, value in (
            ("looked at", self.rollouts),
            ("with token ids", self.with_token_ids),
            ("more than one model call", self.multi_call),
            ("contiguous", self.contiguous),
            ("broken", self.broken),
            ("malformed token fields", self.malformed),
        ):
            lines.append(f"| {label} | {value} |")
        if self.breaks_by_kind:
            lines += ["", "| break kind | breaks | rollouts (first break) |", "| --- | ---: | ---: |"]
            lines += [
                f"| {k} | {n} | {self.rollouts_by_first_break.get(k, 0)} |" for k, n in self.breaks_by_kind.items()
            ]
            lines += ["", *[f"- `{e}`" for e in self.examples[:5]]]
        return "\n".join(lines) + "\n"


def contiguity_metrics(rows: Iterable[Mapping[str, Any]], tokenizer: Decoder | None = None) -> ContiguityMetrics:
    """Contiguity of every successful rollout row (failed rows are skipped): a pure function for the profile stage."""
    metrics = ContiguityMetrics()
    for row in rows:
        if row.get("status", "ok") != "ok":
            continue
        try:
            check = check_rollout(row, tokenizer)
        except TokenDataError:
            metrics.rollouts += 1
            metrics.malformed += 1
            continue
        metrics.add(str(row.get("rollout_id", "")), check)
    return metrics

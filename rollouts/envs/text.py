"""The `exact_match` and `multiple_choice` environments: short text answers and lettered options (A–J).

exact_match — the answer is, first that applies: the last `\\boxed{...}` content (`\\text{}` unwrapped); else the
rest of the line after the last "Answer:"; else the whole final text. Answer and `expected_answer` are compared
after normalising both: `$`, `**`/`*` emphasis, surrounding quotes and a trailing period stripped, whitespace
collapsed, case folded. `expected_answer` may be a list of acceptable answers.

multiple_choice — the chosen letter. Strong signals: `\\boxed{C}` and "answer is C" / "Answer: (C)" / "correct
option is C"; the last strong one wins. Only when there is none, weak signals count: a "(C)" anywhere or a line that
is just "C" / "C." / "**C**"; again the last wins. When no letter is found but `options` are given, an answer text
(boxed, or after "answer is") that equals an option's text selects that option. `expected_answer` is a letter or
an option's text; `options` may be a list of {"A": "text"} dicts, a dict letter -> text, or a list of strings
(lettered A, B, ... in order). An `I` followed by a lowercase word ("I think") is a pronoun, not option I.
"""

from __future__ import annotations

import re
from typing import Any

from rollouts.envs.base import BuiltinEnvironment, VerifyResult, expected_value, final_text, last_boxed
from rollouts.errors import VerifierError

_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_WHITESPACE = re.compile(r"\s+")
_QUOTES = "\"'`“”‘’«»"
_ANSWER_LINE = re.compile(r"answer\s*(?:\*\*)?\s*:(?:\*\*)?[ \t]*([^\n]*)", re.IGNORECASE)


def normalize_text(value: Any) -> str:
    """Canonical form for exact matching: unwrapped, unquoted, no trailing period, collapsed, case-folded."""
    s = str(value)
    if "\\" in s:
        s = _WRAPPER.sub(r"\1", s)
    s = _WHITESPACE.sub(" ", s.replace("$", "")).strip()
    while True:
        before = s
        s = s.strip().strip("*").strip().rstrip(".").strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1]
        if s == before:
            return s.casefold()


def extract_text_answer(text: str) -> str:
    """The answer part of a model's text (see the module docstring)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed[0]
    at = text.lower().rfind("answer")
    if at >= 0:
        line = _ANSWER_LINE.match(text, at)
        if line and line.group(1).strip():
            return line.group(1).strip()
    return text.strip()


class ExactMatchEnvironment(BuiltinEnvironment):
    """Short factual answers. Row key: `expected_answer` (a string, number, or list of acceptable strings)."""

    name = "exact_match"
    required_keys = ("expected_answer",)

    def score(self, row: dict[str, Any], response: dict[str, Any]) -> VerifyResult:
        expected = expected_value(row, self.name)
        accepted = expected if isinstance(expected, (list, tuple)) else [expected]
        extracted = extract_text_answer(final_text(response))
        given = normalize_text(extracted)
        reward = 1.0 if given and any(given == normalize_text(a) for a in accepted) else 0.0
        return VerifyResult(reward=reward, extra={"extracted_answer": extracted or None})


# ---- multiple choice --------------------------------------------------------------------------------------------

_LETTER = r"(?P<letter>[A-HJ]|I(?!\s+[a-z'’]))"
_STRONG = re.compile(
    r"(?i:answer(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?|(?:option|choice)\s+is|(?:option|choice)\s*:)"
    r"[ \t]*:?[ \t*]*(?:\$?\\boxed\{|\\text\{|\$)*[ \t*]*\(?" + _LETTER + r"\)?(?![A-Za-z0-9])"
)
_PAREN = re.compile(r"\((?P<letter>[A-J])\)")
_BARE_LINE = re.compile(r"^[ \t*#>]*\(?(?P<letter>[A-J])\)?[.:)]?[ \t*]*$", re.MULTILINE)
_BOXED_LETTER = re.compile(r"^\(?([A-J])\)?(?:[.:)\s]|$)")
_EXPECTED_LETTER = re.compile(r"^\(?([A-J])\)?\.?$")
_ANSWER_TEXT = re.compile(r"answer(?:\s+is)?\s*:?[ \t]*([^\n]*)", re.IGNORECASE)


def option_texts(options: Any) -> dict[str, str]:
    """`options` as {letter: text}, from a list of {"A": "text"} dicts, a dict, or a list of strings."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        mapping: dict[str, str] = {}
        for index, item in enumerate(options):
            if isinstance(item, dict):
                mapping.update({str(k).strip().upper(): str(v) for k, v in item.items()})
            else:
                mapping["ABCDEFGHIJ"[index] if index < 10 else str(index)] = str(item)
        return mapping
    raise VerifierError(f"`options` must be a list or a dict, not {type(options).__name__}", key="options")


def extract_choice(text: str) -> str | None:
    """The chosen letter A–J, or None (see the module docstring for the precedence)."""
    best, best_at = None, -1
    boxed = last_boxed(text)
    if boxed is not None:
        content = _WRAPPER.sub(r"\1", boxed[0]).strip()
        letter = _BOXED_LETTER.match(content)
        if letter:
            best, best_at = letter.group(1), boxed[1]
    for match in _STRONG.finditer(text):
        if match.start() > best_at:
            best, best_at = match.group("letter"), match.start()
    if best is not None:
        return best
    for pattern in (_PAREN, _BARE_LINE):
        for match in pattern.finditer(text):
            if match.start() > best_at:
                best, best_at = match.group("letter"), match.start()
    return best


def _choice_by_text(text: str, options: dict[str, str]) -> str | None:
    by_text = {normalize_text(v): k for k, v in options.items()}
    candidates = []
    boxed = last_boxed(text)
    if boxed is not None:
        candidates.append(boxed[0])
    at = text.lower().rfind("answer")
    if at >= 0 and (phrase := _ANSWER_TEXT.match(text, at)):
        candidates.append(phrase.group(1))
    candidates.append(text)
    for candidate in candidates:
        letter = by_text.get(normalize_text(candidate))
        if letter:
            return letter
    return None


class MultipleChoiceEnvironment(BuiltinEnvironment):
    """Lettered options (MMLU, GPQA style). Row keys: `expected_answer` (letter or option text), `options`."""

    name = "multiple_choice"
    required_keys = ("expected_answer",)

    def score(self, row: dict[str, Any], response: dict[str, Any]) -> VerifyResult:
        expected = str(expected_value(row, self.name)).strip()
        options = option_texts(row.get("options"))
        expected_letter = self._expected_letter(expected, options)
        text = final_text(response)
        chosen = extract_choice(text)
        if chosen is None and options:
            chosen = _choice_by_text(text, options)
        reward = 1.0 if chosen == expected_letter else 0.0
        return VerifyResult(reward=reward, extra={"extracted_answer": chosen})

    def _expected_letter(self, expected: str, options: dict[str, str]) -> str:
        letter = _EXPECTED_LETTER.match(expected.upper() if len(expected) <= 4 else expected)
        if letter:
            return letter.group(1)
        wanted = normalize_text(expected)
        for key, text in options.items():
            if normalize_text(text) == wanted:
                return key
        raise VerifierError(
            f"multiple_choice: expected_answer {expected!r} is neither a letter A-J nor the text of one of the "
            f"options ({sorted(options) or 'no `options` on the row'})",
            key="expected_answer",
        )

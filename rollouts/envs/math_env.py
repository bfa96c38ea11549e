"""The `math` environment: extract a final answer and compare it with `expected_answer` by value, not by spelling.

Extraction (first that applies): the last complete `\\boxed{...}` / `\\fbox{...}`; else the text after the last
"answer is" / "Answer:" on its line (its last `$...$` span when there is one); else the last number in the text.
A leading `<think>...</think>` block is ignored, and a GSM8K-style reference (`... #### 72`) counts from `####`.

Equivalence (cheap, no sympy), tried in order on normalised strings:
  1. equal after normalising: `$`, `\\(`, `\\left`/`\\right`, `\\!`, `\\,`, `\\text{}`/`\\mathrm{}` wrappers, degrees
     (`^\\circ`, `°`), trailing units (`12\\text{ cm}`, `5 apples`), thousands separators (`1,000`, `1{,}000`,
     `1\\,000`), `\\dfrac`/`\\tfrac` -> `\\frac`, a leading `x =`, and whitespace that does not separate two letters;
  2. numbers: a small exact evaluator over `Fraction` (`.5`, `1/2`, `\\frac12`, `-\\frac{3}{4}`, `10^{3}`,
     `1.5\\times10^3`, `2\\frac{1}{2}` read as a mixed number). Exact values compare exactly; once a square root,
     `\\pi` or a trig function makes a value inexact, values match within 1e-6 relative (1e-9 absolute);
  3. percent: a `%` on one side only is optional: `50\\%` matches both `50` and `0.5`;
  4. tuples, intervals and lists element-wise: `(1,2)` is ordered and bracket-exact (`[0,1)` != `(0,1)`),
     `\\{...\\}` sets and bare `a, b` lists are unordered, `\\cup` unions are compared piece by piece;
  5. expressions in single-letter variables are equal when they agree at three fixed points (`x+1` = `1+x`,
     `(x-1)(x+1)` = `x^2-1`); strings with multi-letter words are never evaluated (so `yes` != `sey`);
  6. words compare case-insensitively (`\\text{Monday}` = `monday`).
Anything else is simply unequal: reward 0.0. The extras are always
`{"extracted_answer": str | None, "expected_answer": str}`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from rollouts.envs.base import BuiltinEnvironment, VerifyResult, braced_argument, expected_value, final_text, last_boxed
from rollouts.envs.mathexpr import numeric_value, symbolic_equal, values_close

# ---- extraction -------------------------------------------------------------------------------------------------

_ANSWER_PHRASE = re.compile(
    r"answer(?![a-zA-Z])(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?\s*(?:\*\*)?\s*[:=]?(?:\*\*)?[ \t]*"
    r"(?:is[ \t]+)?([^\n]*?)(?:\.(?=\s|$)|\n|$)",
    re.IGNORECASE,
)
_MATH_SPAN = re.compile(r"\$+([^$]+)\$+")
_LAST_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?!\d)|-?\.\d+")
_DIGIT = re.compile(r"\d")
_NUMBER_CHARS = frozenset("0123456789,./-")


def _last_number(text: str) -> str | None:
    """The last number in `text`; a minus sign counts only when it is not a binary minus (`x-5` gives 5).

    Finds the last digit from the end (cheap), then parses only the few characters before it.
    """
    found = _DIGIT.search(text[::-1])
    if found is None:
        return None
    end = len(text) - found.start()
    start = max(0, end - 32)
    while start > 0 and text[start] in _NUMBER_CHARS:  # never start inside a number
        start -= 1
    match = None
    for found in _LAST_NUMBER.finditer(text, start, end):
        match = found
    if match is None:
        return None
    number, at = match.group(), match.start()
    if number[0] == "-" and at > 0 and (text[at - 1].isalnum() or text[at - 1] in ")]}_"):
        number = number[1:]
    return number


def extract_answer(text: str) -> str | None:
    """The model's final answer as written (not normalised), or None when the text has none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed[0]
    at = text.lower().rfind("answer")
    if at >= 0:
        phrase = _ANSWER_PHRASE.match(text, at)
        if phrase:
            candidate = phrase.group(1).strip().strip("*").strip()
            spans: list[str] = _MATH_SPAN.findall(candidate)  # one group: a list of strings
            if spans:
                return spans[-1].strip()
            if candidate and (len(candidate) <= 20 or not _has_digit(candidate)):
                return candidate.rstrip(".")
            number = _last_number(candidate)
            if number:
                return number
    return _last_number(text)


def _has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


# ---- normalisation ----------------------------------------------------------------------------------------------

_DELIMS = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]|\\displaystyle|\\textstyle")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])\.?")
_THIN_SPACE = re.compile(r"\\[,;: ]|\\q?quad(?![a-zA-Z])|~")
_UNIT_TEXT = re.compile(r"(?<=[\d}.])\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z .]*\}(?:\^\{?[23]\}?)?\s*$")
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|\\circ|°|\\degree(?![a-zA-Z])|\\deg(?![a-zA-Z])")
_FRAC_ALIASES = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_SPACES = re.compile(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])")
_MULTI_SPACE = re.compile(r"\s+")
_WORD_UNITS = re.compile(r"^(-?[\d.,/]+)\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*(?:\^[23])?$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(,)\d{3}|( )\d{3})+(?:\.\d+)?$")
_VAR_PREFIX = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?=(?=[^=]+$)")
_UNICODE = str.maketrans({"−": "-", "–": "-", "×": "*", "·": "*", "÷": "/", "π": "\\pi ", "∞": "\\infty "})


@lru_cache(maxsize=1 << 16)
def normalize(answer: str) -> str:
    """A canonical spelling of an answer: equal strings mean equal answers (the converse needs `equivalent`)."""
    s = answer.strip().translate(_UNICODE).replace("{,}", ",")
    if "####" in s:  # GSM8K reference solutions end with "#### 72"
        s = s.rsplit("####", 1)[1]
    if "\\" in s or "$" in s:
        if "\\boxed" in s or "\\fbox" in s:
            boxed = last_boxed(s)
            s = boxed[0] if boxed else s
        s = _DELIMS.sub("", s.replace("\\$", ""))
        s = _SIZING.sub("", s)
        s = s.replace("\\!", "").replace("\\%", "%")
        s = _THIN_SPACE.sub(" ", s)
        s = _UNIT_TEXT.sub("", s)
        s = _WRAPPER.sub(r"\1", s)
        s = _WRAPPER.sub(r"\1", s)  # nested wrappers: \text{\textbf{x}}
        s = _DEGREES.sub("", s)
        s = _FRAC_ALIASES.sub("\\\\frac", s)
        s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    elif "°" in s:
        s = s.replace("°", "")
    s = _MULTI_SPACE.sub(" ", s).strip()
    s = s.rstrip(".").strip()
    units = _WORD_UNITS.match(s)
    if units:
        s = units.group(1)
    s = _SPACES.sub("", s)
    thousands = _THOUSANDS.match(s)
    if thousands:
        s = s.replace(",", "").replace(" ", "")
    s = _VAR_PREFIX.sub("", s)
    if s.startswith("{") and s.endswith("}") and braced_argument(s, 0) == (s[1:-1], len(s)):
        s = s[1:-1]
    return s


# ---- comparison -------------------------------------------------------------------------------------------------

_ALPHA_TEXT = re.compile(r"[A-Za-z][A-Za-z '\-]+")


def _split_top(s: str, sep: str = ",") -> list[str] | None:
    """Split on `sep` outside brackets; None when brackets do not balance."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    if depth != 0:
        return None
    parts.append(s[start:])
    return parts


def _as_sequence(s: str) -> tuple[str, list[str]] | None:
    """(kind, elements) for tuples/intervals/sets/lists; kind is the bracket pair, "{}" for sets, "" for bare."""
    kind, inner = "", s
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, inner = "{}", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        kind, inner = s[0] + s[-1], s[1:-1]
    parts = _split_top(inner)
    if parts is None or len(parts) < 2:
        return None
    return kind, [_VAR_PREFIX.sub("", p) for p in parts]


def _sequences_equal(a: tuple[str, list[str]], b: tuple[str, list[str]]) -> bool:
    (kind_a, xs), (kind_b, ys) = a, b
    if len(xs) != len(ys):
        return False
    if kind_a != kind_b and not {kind_a, kind_b} <= {"", "()"}:
        return False
    if kind_a in ("", "{}") and kind_b in ("", "{}"):
        remaining = list(ys)
        for x in xs:
            match = next((k for k, y in enumerate(remaining) if equivalent(x, y)), None)
            if match is None:
                return False
            remaining.pop(match)
        return True
    return all(equivalent(x, y) for x, y in zip(xs, ys, strict=True))


def equivalent(a: str, b: str) -> bool:
    """Whether two *normalised* answers denote the same value (see the module docstring for the rules)."""
    if a == b:
        return True
    if not a or not b:
        return False
    pct_a, pct_b = a.endswith("%"), b.endswith("%")
    if pct_a or pct_b:
        a2, b2 = a.rstrip("%"), b.rstrip("%")
        if pct_a and pct_b:
            return equivalent(a2, b2)
        va, vb = numeric_value(a2), numeric_value(b2)
        if va is None or vb is None:
            return False
        percent, other = (va, vb) if pct_a else (vb, va)
        return values_close(percent, other) or values_close(percent / 100, other)
    va = numeric_value(a)
    if va is not None:
        vb = numeric_value(b)
        if vb is not None:
            return values_close(va, vb)
    if "\\cup" in a or "\\cup" in b:
        pieces_a, pieces_b = _split_top(a, "\\cup"), _split_top(b, "\\cup")
        if pieces_a and pieces_b and len(pieces_a) == len(pieces_b) > 1:
            return all(equivalent(x, y) for x, y in zip(pieces_a, pieces_b, strict=True))
    if "," in a or "," in b:
        seq_a, seq_b = _as_sequence(a), _as_sequence(b)
        if seq_a is not None and seq_b is not None:
            return _sequences_equal(seq_a, seq_b)
    if symbolic_equal(a, b):
        return True
    if _ALPHA_TEXT.fullmatch(a) and _ALPHA_TEXT.fullmatch(b):
        return a.casefold() == b.casefold()
    return False


def answers_match(given: str, expected: str) -> bool:
    """Whether a raw extracted answer matches a raw reference answer."""
    return equivalent(normalize(given), normalize(expected))


class MathEnvironment(BuiltinEnvironment):
    """Final-answer math (MATH, GSM8K, AIME style). Row key: `expected_answer` (or `answer`), string or number."""

    name = "math"
    required_keys = ("expected_answer", "answer")

    def score(self, row: dict[str, Any], response: dict[str, Any]) -> VerifyResult:
        expected = _reference_text(expected_value(row, self.name, ("expected_answer", "answer")))
        extracted = extract_answer(final_text(response))
        reward = 1.0 if extracted is not None and answers_match(extracted, expected) else 0.0
        return VerifyResult(reward=reward, extra={"extracted_answer": extracted, "expected_answer": expected})


def _reference_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

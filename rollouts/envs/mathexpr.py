"""A tiny evaluator for normalised LaTeX answers: exact `Fraction` arithmetic where possible, floats otherwise.

Supports + - * / ^ !, implicit products (`2\\sqrt{2}`, `3x`, `(x-1)(x+1)`), `\\frac` (also `\\frac12`), `\\sqrt`,
`\\sqrt[n]`, `\\pi`, `\\sin` `\\cos` `\\tan` `\\ln` `\\exp`, `|x|`, and single-letter variables. Anything else is
"unsupported" and the caller falls back to comparing strings. Exponents and factorials are bounded, so a hostile
answer cannot make verification slow.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from functools import lru_cache

Value = Fraction | float

REL_TOL = 1e-6
ABS_TOL = 1e-9


class _Unsupported(Exception):
    pass


_NUMBER = re.compile(r"\d+\.?\d*|\.\d+")
_COMMAND = re.compile(r"\\([a-zA-Z]+)")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE]([-+]?\d+))?")
_SIMPLE_RATIO = re.compile(r"(-?\d+)/(\d+)")
_SIMPLE_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_MIXED_NUMBER = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_MAX_EXACT_POWER = 200
_MAX_EXACT_BITS = 20_000  # ~6,000 digits: big enough for any real answer, small enough to stay microseconds
_MAX_DECIMAL_EXPONENT = 1000


def _to_float(v: Value) -> float:
    try:
        return float(v)
    except OverflowError as exc:
        raise _Unsupported("overflow") from exc


def _add(a: Value, b: Value) -> Value:
    if type(a) is Fraction and type(b) is Fraction:
        return a + b
    return _to_float(a) + _to_float(b)


def _mul(a: Value, b: Value) -> Value:
    if type(a) is Fraction and type(b) is Fraction:
        return a * b
    return _to_float(a) * _to_float(b)


def _div(a: Value, b: Value) -> Value:
    if b == 0:
        raise _Unsupported("division by zero")
    if type(a) is Fraction and type(b) is Fraction:
        return a / b
    return _to_float(a) / _to_float(b)


def _root(x: Value, n: int) -> Value:
    if x < 0:
        if n % 2 == 0:
            raise _Unsupported("even root of a negative number")
        return -_root(-x, n)
    if type(x) is Fraction and n == 2:
        num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num * num == x.numerator and den * den == x.denominator:
            return Fraction(num, den)
    result: float = _to_float(x) ** (1.0 / n)
    if type(x) is Fraction:
        rounded = round(result)
        if Fraction(rounded) ** n == x:
            return Fraction(rounded)
    return result


def _pow(base: Value, exp: Value) -> Value:
    if type(exp) is Fraction and exp.denominator == 1 and type(base) is Fraction:
        if abs(exp) > _MAX_EXACT_POWER:
            raise _Unsupported("exponent too large")
        if base == 0 and exp < 0:
            raise _Unsupported("division by zero")
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if size * abs(exp.numerator) > _MAX_EXACT_BITS:
            raise _Unsupported("result too large")
        return base**exp.numerator
    if type(exp) is Fraction and exp.denominator == 2 and exp.numerator == 1:
        return _root(base, 2)
    b, e = _to_float(base), _to_float(exp)
    if b < 0 and not e.is_integer():
        raise _Unsupported("complex power")
    try:
        return math.pow(b, e)
    except (OverflowError, ValueError) as exc:
        raise _Unsupported("power") from exc


_FUNCTIONS = {"sin": math.sin, "cos": math.cos, "tan": math.tan, "ln": math.log, "exp": math.exp}


class _Parser:
    """Recursive descent over normalised LaTeX: + - * / ^ !, implicit products, \\frac, \\sqrt, \\pi, functions."""

    __slots__ = ("s", "i", "env")

    def __init__(self, s: str, env: dict[str, float] | None) -> None:
        self.s = s
        self.i = 0
        self.env = env

    def parse(self) -> Value:
        value = self.expr()
        if self.i != len(self.s):
            raise _Unsupported(f"unexpected {self.s[self.i :]!r}")
        return value

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def expr(self) -> Value:
        value = self.term()
        while (c := self.peek()) in ("+", "-") and c:
            self.i += 1
            rhs = self.term()
            value = _add(value, rhs if c == "+" else -rhs)
        return value

    def term(self) -> Value:
        value = self.signed()
        while True:
            c = self.peek()
            if c == "*":
                self.i += 1
                value = _mul(value, self.signed())
            elif c == "/":
                self.i += 1
                value = _div(value, self.signed())
            elif c == " ":
                self.i += 1
            elif c and (c.isalnum() or c in "({.\\|"):
                value = _mul(value, self.power())  # implicit product: 2\sqrt{2}, 3x, (x-1)(x+1)
            else:
                return value

    def signed(self) -> Value:
        c = self.peek()
        if c == "-":
            self.i += 1
            return -self.signed()
        if c == "+":
            self.i += 1
            return self.signed()
        return self.power()

    def power(self) -> Value:
        base = self.atom()
        while self.peek() == "!":
            self.i += 1
            if type(base) is not Fraction or base.denominator != 1 or not 0 <= base <= 100:
                raise _Unsupported("factorial")
            base = Fraction(math.factorial(int(base)))
        if self.peek() == "^":
            self.i += 1
            if self.peek() == "-":
                self.i += 1
                return _pow(base, -self.argument())
            return _pow(base, self.argument())
        return base

    def argument(self) -> Value:
        """A TeX macro argument: a `{group}` or a single token (`\\frac12`, `x^2`)."""
        c = self.peek()
        if c == "{":
            return self.group("{", "}")
        if c.isdigit():
            self.i += 1
            return Fraction(int(c))
        if c.isalpha():
            self.i += 1
            return self.variable(c)
        if c == "\\":
            return self.command()
        raise _Unsupported("argument")

    def group(self, open_: str, close: str) -> Value:
        self.i += 1
        value = self.expr()
        if self.peek() != close:
            raise _Unsupported(f"expected {close!r}")
        self.i += 1
        return value

    def variable(self, name: str) -> Value:
        if self.env is None or name not in self.env:
            raise _Unsupported(f"variable {name}")
        return self.env[name]

    def atom(self) -> Value:
        c = self.peek()
        if c.isdigit() or c == ".":
            match = _NUMBER.match(self.s, self.i)
            if match is None:
                raise _Unsupported("number")
            self.i = match.end()
            return Fraction(match.group())
        if c == "(":
            return self.group("(", ")")
        if c == "{":
            return self.group("{", "}")
        if c == "|":
            value = self.group("|", "|")
            return abs(value) if isinstance(value, Fraction) else abs(value)  # per member: abs() of the union is object
        if c == "\\":
            return self.command()
        if c.isalpha():
            self.i += 1
            return self.variable(c)
        raise _Unsupported(f"unexpected {c!r}")

    def command(self) -> Value:
        match = _COMMAND.match(self.s, self.i)
        if match is None:
            raise _Unsupported("command")
        self.i = match.end()
        name = match.group(1)
        if name == "frac":
            numerator = self.argument()
            return _div(numerator, self.argument())
        if name == "sqrt":
            degree = 2
            if self.peek() == "[":
                close = self.s.find("]", self.i)
                if close < 0 or not self.s[self.i + 1 : close].isdigit():
                    raise _Unsupported("root degree")
                degree = int(self.s[self.i + 1 : close])
                self.i = close + 1
                if not 1 <= degree <= 10:
                    raise _Unsupported("root degree")
            return _root(self.argument(), degree)
        if name == "pi":
            return math.pi
        function = _FUNCTIONS.get(name)
        if function is not None:
            arg = self.argument() if self.peek() in ("{", "\\") else self.power()
            try:
                return function(_to_float(arg))
            except (OverflowError, ValueError) as exc:
                raise _Unsupported(name) from exc
        raise _Unsupported(f"\\{name}")


@lru_cache(maxsize=1 << 16)
def numeric_value(s: str) -> Value | None:
    """The value of a normalised answer without variables, or None (an exact Fraction whenever possible)."""
    plain = _PLAIN_NUMBER.fullmatch(s)
    if plain:
        if plain.group(1) and abs(int(plain.group(1))) > _MAX_DECIMAL_EXPONENT:
            return None  # 1e999999999 would build a billion-digit integer
        return Fraction(s)
    ratio = _SIMPLE_RATIO.fullmatch(s)
    if ratio:
        den = int(ratio.group(2))
        return Fraction(int(ratio.group(1)), den) if den else None
    frac = _SIMPLE_FRAC.fullmatch(s)
    if frac:
        den = int(frac.group(3))
        if not den:
            return None
        value = Fraction(int(frac.group(2)), den)
        return -value if frac.group(1) else value
    mixed = _MIXED_NUMBER.fullmatch(s)
    if mixed and int(mixed.group(3)) < int(mixed.group(4)):
        value = int(mixed.group(2)) + Fraction(int(mixed.group(3)), int(mixed.group(4)))
        return -value if mixed.group(1) else value
    if not s or len(s) > 200 or _has_letter_outside_commands(s):
        return None
    try:
        return _Parser(s, None).parse()
    except (_Unsupported, ZeroDivisionError, OverflowError, ValueError, RecursionError):
        return None


def _has_letter_outside_commands(s: str) -> bool:
    return _LOOSE_LETTER.search(s) is not None


_LOOSE_LETTER = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_VARIABLES = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z](?![a-zA-Z])")
_rng = random.Random(20240611)
_POINTS = [{chr(c): _rng.uniform(0.35, 2.25) for c in [*range(65, 91), *range(97, 123)]} for _ in range(3)]


def values_close(a: Value, b: Value) -> bool:
    if type(a) is Fraction and type(b) is Fraction:
        return a == b
    try:
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    except OverflowError:
        return False


def symbolic_equal(a: str, b: str) -> bool:
    if _WORD.search(a) or _WORD.search(b) or len(a) > 200 or len(b) > 200:
        return False
    names = set(_VARIABLES.findall(a))
    if not names or names != set(_VARIABLES.findall(b)):
        return False
    for point in _POINTS:
        try:
            if not values_close(_Parser(a, point).parse(), _Parser(b, point).parse()):
                return False
        except (_Unsupported, ZeroDivisionError, OverflowError, ValueError, RecursionError):
            return False
    return True

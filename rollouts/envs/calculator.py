"""The `calculator` environment: math problems with a `calculate` tool, scored by the `math` verifier.

`calculate` evaluates an arithmetic expression with exact rational arithmetic where it can (`1/3 + 1/6` is `1/2`,
`2**100` is exact) and floats once a function makes the value irrational (`sqrt(2)`, `pi`). It reads Python
syntax plus `^` for powers and the `×`, `÷`, `−` signs. Results: an integer (`27`), a terminating decimal (`62.5`),
a fraction when the decimal would not terminate (`1/3`), or a float to 15 significant digits. Bounds on the
expression's size, exponents, factorials and the size of intermediate numbers keep a hostile call cheap.
The reward is the `math` environment's (final answer vs `expected_answer`); extras add `calculator_calls`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from rollouts.envs.base import VerifyResult
from rollouts.envs.math_env import MathEnvironment
from rollouts.envs.toolenv import ToolEnvironment
from rollouts.envs.tools import tool_from_function
from rollouts.errors import ToolError

Value = Fraction | float

MAX_EXPRESSION_CHARS = 1000
MAX_NODES = 300
MAX_BITS = 4096  # ~1,200 digits: far beyond any real problem, still microseconds to compute
MAX_EXPONENT = 1000
MAX_FACTORIAL = 300
_SIGNS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "^": "**"})


def _exact_root(value: Fraction, n: int) -> Fraction | None:
    if value < 0:
        return None
    num, den = round(value.numerator ** (1 / n)), round(value.denominator ** (1 / n))
    for a in (num - 1, num, num + 1):
        for b in (den - 1, den, den + 1):
            if a >= 0 and b > 0 and Fraction(a, b) ** n == value:
                return Fraction(a, b)
    return None


def _float(value: Value) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ToolError("the number is too large") from None


def _sqrt(x: Value) -> Value:
    if isinstance(x, Fraction) and (root := _exact_root(x, 2)) is not None:
        return root
    if x < 0:
        raise ToolError("sqrt of a negative number")
    return math.sqrt(_float(x))


def _integer(x: Value, what: str) -> int:
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise ToolError(f"{what} needs an integer, got {format_value(x)}")


def _factorial(x: Value) -> Value:
    n = _integer(x, "factorial")
    if not 0 <= n <= MAX_FACTORIAL:
        raise ToolError(f"factorial is limited to 0..{MAX_FACTORIAL}")
    return Fraction(math.factorial(n))


def _log(x: Value, base: Value | None = None) -> float:
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise ToolError("log needs a positive number (and a positive base other than 1)")
    return math.log(_float(x)) if base is None else math.log(_float(x), _float(base))


def _rounded(x: Value, digits: Value | None = None) -> Value:
    if digits is None:
        return Fraction(round(x))
    places = _integer(digits, "round")
    return round(Fraction(x) if isinstance(x, float) else x, places)


def _float_fn(fn: Callable[[float], float]) -> Callable[[Value], float]:
    return lambda x: fn(_float(x))


FUNCTIONS: dict[str, Callable[..., Value]] = {
    "sqrt": _sqrt,
    "abs": abs,
    "round": _rounded,
    "factorial": _factorial,
    "floor": lambda x: Fraction(math.floor(x)),
    "ceil": lambda x: Fraction(math.ceil(x)),
    "min": min,
    "max": max,
    "log": _log,
    "ln": _log,
    "log10": lambda x: _log(x, 10),
    "log2": lambda x: _log(x, 2),
    "exp": _float_fn(math.exp),
    "sin": _float_fn(math.sin),
    "cos": _float_fn(math.cos),
    "tan": _float_fn(math.tan),
    "asin": _float_fn(math.asin),
    "acos": _float_fn(math.acos),
    "atan": _float_fn(math.atan),
    "gcd": lambda *xs: Fraction(math.gcd(*(_integer(x, "gcd") for x in xs))),
    "lcm": lambda *xs: Fraction(math.lcm(*(_integer(x, "lcm") for x in xs))),
}
CONSTANTS: dict[str, Value] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _power(base: Value, exponent: Value) -> Value:
    if isinstance(exponent, Fraction) and exponent.denominator == 1 and isinstance(base, Fraction):
        n = exponent.numerator
        if abs(n) > MAX_EXPONENT or max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(n) > MAX_BITS:
            raise ToolError("the power is too large")
        if base == 0 and n < 0:
            raise ToolError("division by zero")
        return base**n
    if isinstance(exponent, Fraction) and isinstance(base, Fraction) and exponent.denominator <= 16:
        root = _exact_root(base, exponent.denominator)
        if root is not None:
            return _power(root, Fraction(exponent.numerator))
    if base < 0:
        raise ToolError("a negative number to a fractional power is not a real number")
    try:
        return math.pow(_float(base), _float(exponent))
    except OverflowError:
        raise ToolError("the power is too large") from None


_BINARY: dict[type[ast.operator], Callable[[Value, Value], Value]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _power,
}


def _check(value: Value) -> Value:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ToolError("the result is not a finite number")
    elif max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise ToolError("the number is too large")
    return value


def _eval(node: ast.AST) -> Value:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise ToolError("the number is too large")
        return _check(Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("division by zero")
        return _check(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r} (constants: {', '.join(CONSTANTS)})")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        function = FUNCTIONS.get(node.func.id)
        if function is None:
            raise ToolError(f"unknown function {node.func.id!r} (functions: {', '.join(FUNCTIONS)})")
        try:
            return _check(function(*(_eval(arg) for arg in node.args)))
        except TypeError:
            raise ToolError(f"wrong number of arguments for {node.func.id}") from None
        except (ValueError, ZeroDivisionError, OverflowError) as exc:
            raise ToolError(f"{node.func.id}: {exc}") from None
    raise ToolError(f"unsupported syntax: {ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__}")


def evaluate(expression: str) -> Value:
    """The value of an arithmetic expression, or a ToolError saying why there is none."""
    text = expression.translate(_SIGNS).strip()
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"cannot parse the expression: {exc.msg} at column {exc.offset}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError("the expression is too long")
    try:
        return _eval(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None


def format_value(value: Value) -> str:
    """`27`, `62.5`, `1/3`, or a float to 15 significant digits."""
    if isinstance(value, float):
        return format(value, ".15g")
    if value.denominator == 1:
        return str(value.numerator)
    den, places = value.denominator, {2: 0, 5: 0}
    for prime in places:
        while den % prime == 0:
            den //= prime
            places[prime] += 1
    digits = max(places.values())
    if den == 1 and digits <= 30:  # a terminating decimal: exact digits, no float rounding
        scaled = abs(value.numerator) * 10**digits // value.denominator
        whole, fraction = divmod(scaled, 10**digits)
        return f"{'-' if value < 0 else ''}{whole}.{fraction:0{digits}d}".rstrip("0").rstrip(".")
    return f"{value.numerator}/{value.denominator}"


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return its value.

    Supports + - * / // % ** (or ^), parentheses, the functions sqrt, abs, round, floor, ceil, min, max, log, ln,
    log10, log2, exp, sin, cos, tan, asin, acos, atan, factorial, gcd, lcm and the constants pi, e, tau.

    Args:
        expression: the expression, for example "(37 + 5) * 12 / 7" or "sqrt(2) * pi".
    """
    return format_value(evaluate(expression))


CALCULATOR_TOOLS = (tool_from_function(calculate),)  # built once: a schema costs ~1 ms


class CalculatorEnvironment(ToolEnvironment):
    """Final-answer math with a calculator. Row key: `expected_answer` (as for `math`)."""

    name = "calculator"

    def __init__(self) -> None:
        super().__init__(tools=CALCULATOR_TOOLS)
        self._math = MathEnvironment()

    def score_state(self, row: dict[str, Any], response: dict[str, Any], state: Any) -> VerifyResult:
        result = self._math.score(row, response)
        calls = sum(1 for item in response.get("output") or [] if item.get("type") == "function_call")
        return VerifyResult(reward=result.reward, extra={**result.extra, "calculator_calls": calls})

"""What the simulated model says: arithmetic with temperature-dependent accuracy, letters, echoes and tool calls
(one call for a bare question, or the turns of a plan the prompt spells out: plan.py)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from rollouts.sim.plan import Plan, read_plan
from rollouts.sim.tokens import ToolCall, Turn

MAX_SHOWN_STEPS = 8
# Bounds that keep the parser cheap (and its recursion shallow) on hostile input.
_MAX_DIGITS = 12
_MAX_TOKENS = 256
_OPERATORS = "+-*/"
_NORMALISE = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"})
_CANDIDATE_RE = re.compile(r"[(\-]*\d[\d\s()+\-*/]*")
_EXPR_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")
_OPTION_RE = re.compile(r"^[ \t]*\(?([A-J])[).:][ \t]+(\S.*)$", re.MULTILINE)
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?")


def p_correct(temperature: float) -> float:
    """Chance of a right answer: always right when greedy, falling linearly to 5% at T >= 2.1."""
    return min(1.0, max(0.05, 1.0 - 0.45 * temperature))


@dataclass(frozen=True, slots=True)
class Problem:
    expression: str
    value: Fraction
    steps: tuple[str, ...]  # "4 + 5 = 9", innermost first


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    parameters: tuple[str, ...]  # property names, required ones first


@dataclass(frozen=True, slots=True)
class Answer:
    reasoning: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # the turn's calls, in order; each gets its own call id

    @property
    def tool_call(self) -> ToolCall | None:
        """The first call, if any."""
        return self.tool_calls[0] if self.tool_calls else None


class _Parser:
    """Recursive descent over integers, + - * / and parentheses, recording each binary step."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0
        self.steps: list[str] = []

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            operator = self.take()
            right = self.term()
            value = self.step(value, operator, right)
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            operator = self.take()
            right = self.factor()
            value = self.step(value, operator, right)
        return value

    def factor(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end")
        self.take()
        if token == "-":
            return -self.factor()
        if token == "+":
            return self.factor()
        if token == "(":
            value = self.expression()
            if self.peek() != ")":
                raise ValueError("unbalanced parentheses")
            self.take()
            return value
        if token.isdigit():
            if len(token) > _MAX_DIGITS:
                raise ValueError("number too large")
            return Fraction(int(token))
        raise ValueError(f"unexpected {token!r}")

    def step(self, left: Fraction, operator: str, right: Fraction) -> Fraction:
        if operator == "+":
            result = left + right
        elif operator == "-":
            result = left - right
        elif operator == "*":
            result = left * right
        else:
            if right == 0:
                raise ValueError("division by zero")
            result = left / right
        self.steps.append(f"{plain(left)} {operator} {plain(right)} = {plain(result)}")
        return result


def evaluate(expression: str) -> Problem | None:
    """Parse and evaluate an integer expression; None unless it is well formed with at least one operation."""
    tokens: list[str] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _EXPR_TOKEN_RE.match(text, position)
        if match is None:
            return None
        tokens.append(match.group(1) or match.group(2))
        position = match.end()
        if len(tokens) > _MAX_TOKENS:
            return None
    parser = _Parser(tokens)
    try:
        value = parser.expression()
    except (ValueError, IndexError):
        return None
    if parser.position != len(tokens) or not parser.steps:
        return None
    return Problem(" ".join(text.split()), value, tuple(parser.steps))


def _trim(candidate: str) -> str:
    """Drop trailing operators and parentheses that belong to the surrounding prose, not the expression."""
    text = candidate.strip().rstrip(_OPERATORS + "( ")
    while text.count(")") > text.count("(") and text.endswith(")"):
        text = text[:-1].rstrip()
    while text.count("(") > text.count(")") and text.startswith("("):
        text = text[1:].lstrip()
    return text


def find_problem(text: str) -> Problem | None:
    """The last arithmetic expression in `text` ("What is 3 * (4 + 5)?" -> 3 * (4 + 5) = 27)."""
    normalised = text.translate(_NORMALISE)
    for match in reversed(list(_CANDIDATE_RE.finditer(normalised))):
        problem = evaluate(_trim(match.group()))
        if problem is not None:
            return problem
    return None


def find_options(text: str) -> list[tuple[str, str]]:
    """Multiple-choice options "A) ..." / "B. ..." when they run A, B, C... in order; else []."""
    options = [(match.group(1), match.group(2).strip()) for match in _OPTION_RE.finditer(text)]
    letters = [letter for letter, _ in options]
    expected = [chr(ord("A") + index) for index in range(len(letters))]
    return options if len(options) >= 2 and letters == expected else []


def find_number(text: str) -> Fraction | None:
    """The last number in a tool's output ("19", "-2.5", "3/4")."""
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    try:
        return Fraction(matches[-1].replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def plain(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def wrong_value(value: Fraction, rng: random.Random) -> Fraction:
    """A plausible slip: off by a little, in proportion to the answer's size."""
    spread = max(3, abs(value.numerator) // 10)
    offset = rng.randint(1, spread) * rng.choice((-1, 1))
    return Fraction(value.numerator + offset, value.denominator)


def _solve(problem: Problem, rng: random.Random, temperature: float) -> Answer:
    right = rng.random() < p_correct(temperature)
    value = problem.value if right else wrong_value(problem.value, rng)
    steps = list(problem.steps[-MAX_SHOWN_STEPS:])
    if not right:
        steps[-1] = steps[-1].rsplit(" = ", 1)[0] + f" = {plain(value)}"
    content = f"We compute {problem.expression}. {'. '.join(steps)}. The answer is \\boxed{{{latex(value)}}}."
    reasoning = f"I need to evaluate {problem.expression}, one operation at a time."
    return Answer(reasoning, content)


def _use_tool_result(output: str, value: Fraction, rng: random.Random, temperature: float) -> Answer:
    right = rng.random() < p_correct(temperature)
    shown = value if right else wrong_value(value, rng)
    content = f"The tool returned {output.strip()}. The answer is \\boxed{{{latex(shown)}}}."
    return Answer("The tool has answered; I will report its result.", content)


def _choose(options: list[tuple[str, str]], problem: Problem | None, rng: random.Random, temperature: float) -> Answer:
    letters = [letter for letter, _ in options]
    right = None
    if problem is not None:
        right = next((letter for letter, text in options if find_number(text) == problem.value), None)
    if right is not None and rng.random() < p_correct(temperature):
        letter = right
    else:
        letter = rng.choice([other for other in letters if other != right] or letters)
    return Answer(f"There are {len(options)} options; I pick the most likely one.", f"Answer: {letter}")


def _call_tool(tool: ToolSpec, problem: Problem | None, user_text: str) -> Answer:
    if problem is not None:
        name, value = (tool.parameters[0] if tool.parameters else "expression"), problem.expression
    else:
        name, value = (tool.parameters[0] if tool.parameters else "query"), user_text
    call = ToolCall(tool.name, json.dumps({name: value}, ensure_ascii=False))
    return Answer(f"I should call {tool.name} to help with this.", "", (call,))


def _follow(
    plan: Plan, since_user: list[Turn], user_text: str, rng: random.Random, temperature: float, parallel: bool
) -> Answer:
    """The plan's next turn, counted as the assistant turns with tool calls since the user spoke; then the end.

    A step's calls are all made together, unless the request forbids parallel calls (one call per turn then). With
    probability 1 - p_correct one call of the step is left out, so a sampled rollout can miss a change and lose
    its reward; leaving out a step's only call ends the rollout early with a final text.
    """
    if not parallel:
        plan = tuple((call,) for step in plan for call in step)
    done = sum(1 for turn in since_user if turn.role == "assistant" and turn.tool_calls)
    if done < len(plan):
        calls = plan[done]
        if rng.random() >= p_correct(temperature):
            left_out = rng.randrange(len(calls))
            calls = calls[:left_out] + calls[left_out + 1 :]
        if calls:
            names = ", ".join(dict.fromkeys(call.name for call in calls))
            return Answer(f"Step {done + 1} of {len(plan)}: {names}.", "", calls)
    options = find_options(user_text)
    if options:
        return _choose(options, find_problem(user_text), rng, temperature)
    outputs = [turn.content for turn in since_user if turn.role == "tool"]
    # A plan that computes (its last output is a number, as `calculate` returns): report that result.
    number = find_number(outputs[-1]) if outputs and _NUMBER_RE.fullmatch(outputs[-1].strip()) else None
    if number is not None and done >= len(plan):
        return _use_tool_result(outputs[-1], number, rng, temperature)
    made = sum(len(turn.tool_calls) for turn in since_user if turn.role == "assistant")
    errors = sum(1 for text in outputs if text.startswith("Error"))
    noted = f", {errors} of them failed" if errors else ""
    summary = f"{made} tool call{'s' * (made != 1)} in {done} turn{'s' * (done != 1)}"
    return Answer("The plan's steps are done; I will confirm.", f"Done: {summary}{noted}.")


def respond(
    turns: list[Turn], tools: list[ToolSpec], rng: random.Random, temperature: float, *, parallel: bool = True
) -> Answer:
    """Decide the next assistant turn: a plan's tool calls, a tool call, a worked answer, a letter, or an echo."""
    last_user = max((index for index, turn in enumerate(turns) if turn.role == "user"), default=-1)
    user_text = turns[last_user].content if last_user >= 0 else (turns[-1].content if turns else "")
    if tools:
        plan = read_plan(user_text, {tool.name for tool in tools})
        if plan:
            return _follow(plan, turns[last_user + 1 :], user_text, rng, temperature, parallel)
    tool_outputs = [turn.content for turn in turns[last_user + 1 :] if turn.role == "tool"]
    problem = find_problem(user_text)
    if tools and not tool_outputs:
        return _call_tool(tools[0], problem, user_text)
    options = find_options(user_text)
    if options:
        return _choose(options, problem, rng, temperature)
    if tool_outputs:
        number = find_number(tool_outputs[-1])
        if number is not None:
            return _use_tool_result(tool_outputs[-1], number, rng, temperature)
    if problem is not None:
        return _solve(problem, rng, temperature)
    return Answer("There is nothing to solve, so I repeat the user's words.", f"Echo: {user_text}")

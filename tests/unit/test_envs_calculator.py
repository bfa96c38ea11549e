"""The `calculator` environment: the evaluator's values and limits, its tool spec, and math-verified rewards."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from rollouts.envs import CalculatorEnvironment
from rollouts.envs.calculator import calculate
from rollouts.envs.tools import ToolError

ROW = {"expected_answer": "45358", "agent_ref": {"name": "calculator"}}


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("3 * (4 + 5)", "27"),
        ("1000 / 16", "62.5"),
        ("1/3 + 1/6", "0.5"),
        ("1/3", "1/3"),
        ("0.1 + 0.2", "0.3"),  # exact decimals, not binary floats
        ("2^100", "1267650600228229401496703205376"),
        ("7 // 2 + 7 % 2", "4"),
        ("−3 × 4 ÷ 6", "-2"),
        ("sqrt(16) + sqrt(1/4)", "4.5"),
        ("8 ** (1/3)", "2"),
        ("sqrt(2)", "1.4142135623731"),
        ("round(pi, 3)", "3.142"),
        ("factorial(10) / factorial(8)", "90"),
        ("gcd(84, 36) + lcm(4, 6)", "24"),
        ("max(3, 9, 2) - min(4, -1)", "10"),
        ("log(8, 2)", "3"),
        ("1/1024", "0.0009765625"),
        ("-7/4", "-1.75"),
    ],
)
def test_values(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("2 ** 100000", "the power is too large"),
        ("9 ** 9 ** 9", "the power is too large"),
        ("1e400", "too large"),
        ("factorial(1000)", "factorial is limited"),
        ("factorial(2.5)", "factorial needs an integer"),
        ("(-8) ** 0.5", "not a real number"),
        ("sqrt(-1)", "negative"),
        ("x + 1", "unknown name 'x'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("(1).real", "unsupported syntax"),
        ("'a' * 3", "unsupported syntax"),
        ("2 +", "cannot parse the expression"),
        ("", "empty"),
        ("1+" * 600 + "1", "longer than 1000 characters"),
        ("1+" * 200 + "1", "the expression is too long"),
        ("sqrt(1, 2)", "wrong number of arguments"),
    ],
)
def test_errors_are_tool_errors(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        calculate(expression)


def test_the_tool_spec_is_strict_with_one_string_parameter() -> None:
    (spec,) = CalculatorEnvironment().tool_specs()
    assert spec["name"] == "calculate" and spec["strict"] is True
    assert spec["parameters"]["required"] == ["expression"]
    assert spec["parameters"]["properties"]["expression"]["type"] == "string"
    assert spec["description"].startswith("Evaluate an arithmetic expression exactly")


def response(*items: dict) -> dict:
    return {"output": list(items)}


CALL = {
    "type": "function_call",
    "call_id": "c1",
    "name": "calculate",
    "arguments": '{"expression": "1284 * 37 - 2150"}',
}
OUTPUT = {"type": "function_call_output", "call_id": "c1", "output": "45358"}


def answer(text: str) -> dict:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


async def test_reward_is_the_math_verifiers_with_the_number_of_calls() -> None:
    env = CalculatorEnvironment()
    assert await env.seed_session(ROW) is None  # stateless: nothing to store between generate and verify
    right = await env.verify(ROW, response(CALL, OUTPUT, answer("So \\boxed{45,358}.")))
    assert right.reward == 1.0 and right.extra == {
        "extracted_answer": "45,358",
        "expected_answer": "45358",
        "calculator_calls": 1,
    }
    wrong = await env.verify(ROW, response(answer("About \\boxed{45000}.")))
    assert wrong.reward == 0.0 and wrong.extra["calculator_calls"] == 0


async def test_every_bundled_prompt_is_answered_by_its_own_expression() -> None:
    text = resources.files("rollouts").joinpath("data/calculator_prompts.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) >= 12
    env = CalculatorEnvironment()
    for row in rows:
        text = row["responses_create_params"]["input"][-1]["content"]
        expression = text.rsplit("Compute ", 1)[1].removesuffix(" with the calculator.")
        value = await env.call_tool("calculate", json.dumps({"expression": expression}), None, None)
        verdict = await env.verify(row, response(answer(f"\\boxed{{{value}}}")))
        assert verdict.reward == 1.0, (text, value, row["expected_answer"])

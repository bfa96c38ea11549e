"""The simulated model's pure parts: arithmetic parsing, answer choice, tokenizer and truncation."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from rollouts.sim.answers import (
    ToolSpec,
    evaluate,
    find_number,
    find_options,
    find_problem,
    latex,
    p_correct,
    respond,
    wrong_value,
)
from rollouts.sim.tokens import IM_END, SPECIAL_IDS, ToolCall, Turn, encode, generate, render_prompt, tokenize


@pytest.mark.parametrize(
    ("text", "expression", "value"),
    [
        ("What is 12 + 7?", "12 + 7", Fraction(19)),
        ("Compute 3 * (4 + 5).", "3 * (4 + 5)", Fraction(27)),
        ("Calculate 144 / 12", "144 / 12", Fraction(12)),
        ("What is 3 / 4?", "3 / 4", Fraction(3, 4)),
        ("What is 6 × 7?", "6 * 7", Fraction(42)),
        ("Evaluate -2 * (3 - 8), please.", "-2 * (3 - 8)", Fraction(10)),
        ("Q: What is 1 + 1? A: 2. Q: What is 10 - 4 * 2?", "10 - 4 * 2", Fraction(2)),
        ("(Find 2 + 3)", "2 + 3", Fraction(5)),
    ],
)
def test_find_problem_takes_the_last_expression(text: str, expression: str, value: Fraction) -> None:
    problem = find_problem(text)
    assert problem is not None
    assert (problem.expression, problem.value) == (expression, value)


@pytest.mark.parametrize("text", ["Tell me a joke.", "Year 2024", "What is 5 / 0?", "Compute 1 + (2", "1 + + "])
def test_find_problem_ignores_text_without_a_valid_expression(text: str) -> None:
    assert find_problem(text) is None


def test_evaluate_records_steps_innermost_first() -> None:
    problem = evaluate("3 * (4 + 5) - 1")
    assert problem is not None
    assert problem.steps == ("4 + 5 = 9", "3 * 9 = 27", "27 - 1 = 26")


def test_evaluate_refuses_huge_numbers_and_plain_numbers() -> None:
    assert evaluate("1234567890123456 * 2") is None
    assert evaluate("42") is None


def test_latex_formats_fractions_reduced() -> None:
    assert latex(Fraction(6, 8)) == "\\frac{3}{4}"
    assert latex(Fraction(-3, 2)) == "-\\frac{3}{2}"
    assert latex(Fraction(19)) == "19"


def test_p_correct_falls_with_temperature() -> None:
    assert p_correct(0.0) == 1.0
    assert p_correct(0.0) > p_correct(0.7) > p_correct(1.5) >= 0.05
    assert p_correct(2.5) == 0.05


def test_wrong_value_is_never_right() -> None:
    rng = random.Random(1)
    assert all(wrong_value(Fraction(v, d), rng) != Fraction(v, d) for v in range(-50, 50) for d in (1, 3))


def test_find_options_needs_letters_in_order() -> None:
    text = "Which is prime?\nA) 4\nB) 6\nC) 7\nD) 9\nAnswer with a letter."
    assert [letter for letter, _ in find_options(text)] == ["A", "B", "C", "D"]
    assert find_options("A) only one") == []
    assert find_options("B) skipped\nC) start") == []


def test_find_number_reads_the_last_number() -> None:
    assert find_number("result: 19") == Fraction(19)
    assert find_number("3/4") == Fraction(3, 4)
    assert find_number("-2.5") == Fraction(-5, 2)
    assert find_number("no numbers") is None


def test_respond_echoes_text_without_a_problem() -> None:
    answer = respond([Turn("user", "hello there")], [], random.Random(0), 0.0)
    assert answer.content == "Echo: hello there"


def test_respond_picks_the_right_letter_when_the_options_hold_the_value() -> None:
    text = "What is 3 + 4?\nA) 6\nB) 7\nC) 8\nAnswer with the letter."
    assert respond([Turn("user", text)], [], random.Random(0), 0.0).content == "Answer: B"


def test_respond_calls_the_tool_with_its_first_required_parameter() -> None:
    tools = [ToolSpec("calculator", ("expression", "precision"))]
    answer = respond([Turn("user", "What is 2 + 2?")], tools, random.Random(0), 0.0)
    assert answer.tool_call is not None
    assert answer.tool_call.name == "calculator"
    assert json.loads(answer.tool_call.arguments) == {"expression": "2 + 2"}
    assert answer.content == ""


def test_respond_uses_the_tool_result_after_the_call() -> None:
    turns = [
        Turn("user", "What is 2 + 2?"),
        Turn("assistant", tool_calls=[ToolCall("calculator", '{"expression": "2 + 2"}')]),
        Turn("tool", "4"),
    ]
    answer = respond(turns, [ToolSpec("calculator", ())], random.Random(0), 0.0)
    assert answer.tool_call is None
    assert answer.content.endswith("The answer is \\boxed{4}.")


def test_tokenizer_keeps_special_tokens_and_drops_whitespace() -> None:
    assert tokenize("<|im_start|>user\nHi, you!<|im_end|>") == ["<|im_start|>", "user", "Hi", ",", "you", "!", IM_END]
    ids = encode("<|im_start|>user")
    assert ids[0] == SPECIAL_IDS["<|im_start|>"] and 0 <= ids[1] < 50_000
    assert encode("same words") == encode("same   words")


def test_generation_appended_to_the_prompt_is_the_next_prompts_prefix() -> None:
    call = ToolCall("calculator", '{"expression": "2 + 2"}')
    first = [Turn("user", "What is 2 + 2?")]
    generation = generate("thinking.", "", call, None)
    second = [*first, Turn("assistant", "", "thinking.", [call]), Turn("tool", "4")]
    before = encode(render_prompt(first, ["calculator"]))
    after = encode(render_prompt(second, ["calculator"]))
    assert after[: len(before) + len(generation.tokens)] == before + generation.token_ids


def test_generate_truncates_to_max_tokens() -> None:
    full = generate("short reasoning", "one two three four five", None, None)
    assert not full.truncated and full.tokens[-1] == IM_END
    cut = generate("short reasoning", "one two three four five", None, 6)
    assert cut.truncated and len(cut.tokens) == 6
    assert (cut.reasoning, cut.content) == ("short reasoning", "one two")
    call = generate("", "", ToolCall("f", '{"a": 1}'), 3)
    assert call.truncated and call.tool_call is None

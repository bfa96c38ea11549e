"""Plans in prompt text (rollouts/sim/plan.py) and how the simulated model follows them turn by turn."""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

import pytest

from rollouts.sim.answers import ToolSpec, respond
from rollouts.sim.plan import MAX_CALL_CHARS, parse_call, parse_plan, read_plan
from rollouts.sim.tokens import ToolCall, Turn
from tests.unit.test_envs_kv_store import plan_of

KV = ("list_keys", "get_value", "set_value", "delete_key")
KV_TOOLS = [ToolSpec(name, ()) for name in KV]


def calls(plan: Any) -> list[list[tuple[str, dict[str, Any]]]]:
    return [[(call.name, json.loads(call.arguments)) for call in step] for step in plan]


def test_every_bundled_kv_store_prompt_reads_as_the_plan_its_steps_spell_out() -> None:
    text = resources.files("rollouts").joinpath("data/kv_store_prompts.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        text = row["responses_create_params"]["input"][-1]["content"]
        assert calls(read_plan(text, KV)) == plan_of(row)
    text = rows[0]["responses_create_params"]["input"][-1]["content"]
    (first, second) = read_plan(text, KV)
    assert first == (ToolCall("get_value", '{"key": "apples"}'), ToolCall("get_value", '{"key": "pears"}'))
    assert second == (ToolCall("set_value", '{"key": "total", "value": "8"}'),)


def test_arguments_are_python_literals_sent_as_json() -> None:
    call = parse_call("f(n=2, x=-1.5, ok=True, none=None, items=[1, 'a'], pair=(1, 2), nested={'k': {'v': 'é'}})")
    assert call is not None and call.name == "f"
    assert (
        call.arguments == '{"n": 2, "x": -1.5, "ok": true, "none": null, "items": [1, "a"], "pair": [1, 2], '
        '"nested": {"k": {"v": "é"}}}'
    )
    assert parse_call("list_keys()") == ToolCall("list_keys", "{}")


@pytest.mark.parametrize(
    "source",
    [
        "f('positional')",  # no parameter name to send it under
        "f(**{'a': 1})",  # ** mapping
        "f(a=g())",  # not a literal: never evaluated
        "f(a=__import__('os'))",
        "f(a={1, 2})",  # a set has no JSON form
        "f(a=b'x')",
        "f(a=1e999)",  # inf is not JSON
        "obj.f(a=1)",  # not a plain name
        "f(a=1",  # syntax error
        "f(a=1, a=2)",  # repeated keyword
        "1 + 2",
        f"f(a='{'x' * MAX_CALL_CHARS}')",  # too long to parse
        "f(a=" + "[" * 200 + "]" * 200 + ")",
    ],
)
def test_a_call_that_does_not_parse_is_left_out(source: str) -> None:
    assert parse_call(source) is None


def test_only_numbered_lines_after_steps_are_turns_and_a_blank_line_ends_the_plan() -> None:
    text = "\n".join(
        [
            '1. `set_value(key="before", value="x")` is not a step: it comes before the Steps line.',
            "Do this. Steps: is not a Steps line when it is inside a sentence.",
            "  Steps:  ",
            "",
            '   1.  `get_value(key="a")` then, on the same line, `get_value(key="b")`',
            "   (a note that is no step)",
            '2.\t`set_value(key="c", value="3")` and `unknown_tool(x=1)`',
            "3. Reply with a confirmation.",
            "",
            '4. `delete_key(key="a")` comes after the blank line',
        ]
    )
    assert calls(parse_plan(text)) == [
        [("get_value", {"key": "a"}), ("get_value", {"key": "b"})],
        [("set_value", {"key": "c", "value": "3"}), ("unknown_tool", {"x": 1})],
        [],
    ]
    # only tools the request offers; a turn left without calls is no turn
    assert calls(read_plan(text, KV)) == [
        [("get_value", {"key": "a"}), ("get_value", {"key": "b"})],
        [("set_value", {"key": "c", "value": "3"})],
    ]
    assert calls(read_plan(text, ["set_value"])) == [[("set_value", {"key": "c", "value": "3"})]]
    assert read_plan(text, []) == ()
    assert read_plan("What is 2 + 2?", KV) == () and read_plan("Steps: 1. `list_keys()`", KV) == ()


PLAN_TEXT = (
    'Rename `a` to `b`.\n\nSteps:\n1. `get_value(key="a")`\n'
    '2. `set_value(key="b", value="1")` and `delete_key(key="a")`'
)


def follow(
    text: str,
    tools: list[ToolSpec],
    temperature: float = 0.0,
    seed: int = 0,
    parallel: bool = True,
    outputs: dict[str, str] | None = None,
) -> tuple[list[tuple[ToolCall, ...]], str]:
    """Run the model against its own plan with canned tool outputs: the calls of each turn, and the final text."""
    turns = [Turn("system", "You manage a store."), Turn("user", text)]
    made: list[tuple[ToolCall, ...]] = []
    for _ in range(10):
        answer = respond(turns, tools, random.Random(seed * 100 + len(made)), temperature, parallel=parallel)
        if not answer.tool_calls:
            return made, answer.content
        assert answer.content == ""
        made.append(answer.tool_calls)
        turns.append(Turn("assistant", "", answer.reasoning, list(answer.tool_calls)))
        turns += [Turn("tool", (outputs or {}).get(call.name, "ok")) for call in answer.tool_calls]
    raise AssertionError("the plan never ended")


def test_the_model_makes_one_turn_per_step_then_answers() -> None:
    made, final = follow(PLAN_TEXT, KV_TOOLS)
    assert [[call.name for call in step] for step in made] == [["get_value"], ["set_value", "delete_key"]]
    assert final == "Done: 3 tool calls in 2 turns."


def test_the_final_text_says_how_many_calls_failed() -> None:
    _, final = follow(PLAN_TEXT, KV_TOOLS, outputs={"delete_key": "Error: there is no key 'a' in the store"})
    assert final == "Done: 3 tool calls in 2 turns, 1 of them failed."


def test_a_new_user_message_starts_its_own_plan() -> None:
    turns = [
        Turn("user", PLAN_TEXT),
        Turn("assistant", "", "", [ToolCall("get_value", '{"key": "a"}')]),
        Turn("tool", "1"),
        Turn("assistant", "Done."),
    ]
    again = respond([*turns, Turn("user", PLAN_TEXT)], KV_TOOLS, random.Random(0), 0.0)
    assert [call.name for call in again.tool_calls] == ["get_value"]  # counting restarts at the last user message
    second = respond(turns[:3], KV_TOOLS, random.Random(0), 0.0)
    assert [call.name for call in second.tool_calls] == ["set_value", "delete_key"]


def test_without_parallel_calls_each_call_is_its_own_turn() -> None:
    made, final = follow(PLAN_TEXT, KV_TOOLS, parallel=False)
    assert [[call.name for call in step] for step in made] == [["get_value"], ["set_value"], ["delete_key"]]
    assert final == "Done: 3 tool calls in 3 turns."


def test_tools_not_offered_are_never_called() -> None:
    made, _ = follow(PLAN_TEXT, [ToolSpec("set_value", ("key", "value"))])
    assert [[call.name for call in step] for step in made] == [["set_value"]]


def test_at_high_temperature_calls_are_sometimes_left_out_and_never_at_zero() -> None:
    full = [[c.name for c in step] for step in follow(PLAN_TEXT, KV_TOOLS)[0]]
    greedy = {
        json.dumps([[c.name for c in s] for s in follow(PLAN_TEXT, KV_TOOLS, 0.0, seed)[0]]) for seed in range(40)
    }
    assert greedy == {json.dumps(full)}
    sampled = [[[c.name for c in s] for s in follow(PLAN_TEXT, KV_TOOLS, 1.0, seed)[0]] for seed in range(200)]
    complete = sum(made == full for made in sampled)
    assert 0.15 < complete / len(sampled) < 0.5  # both steps kept: p_correct(1.0)^2 = 0.3025
    assert [["get_value"], ["delete_key"]] in sampled and [["get_value"], ["set_value"]] in sampled
    assert [] in sampled  # the first step's only call left out: the model answers at once


def test_a_plan_that_computes_ends_with_its_last_result() -> None:
    text = 'Compute (12 * 7) - 5.\n\nSteps:\n1. `calculate(expression="12 * 7")`\n2. `calculate(expression="84 - 5")`'
    made, final = follow(text, [ToolSpec("calculate", ("expression",))], outputs={"calculate": "79"})
    assert [json.loads(step[0].arguments)["expression"] for step in made] == ["12 * 7", "84 - 5"]
    assert final == "The tool returned 79. The answer is \\boxed{79}."


def test_without_a_plan_the_first_tool_is_called_once_as_before() -> None:
    answer = respond([Turn("user", "What is 2 + 2?")], KV_TOOLS[1:2] + KV_TOOLS, random.Random(0), 0.0)
    assert answer.tool_calls == (ToolCall("get_value", '{"expression": "2 + 2"}'),)

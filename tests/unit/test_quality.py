"""Each health check on a crafted rollout that fires it and on a near miss that must not."""

from __future__ import annotations

import json

import pytest

from rollouts.quality import QualityConfig, check_run

from .quality_rows import CALCULATOR, call, check, evidence, fired, message, output, prose, reasoning, row

LOOP = "The answer is 4, so we add one more. " * 80


def test_empty_completion_fires_on_reasoning_only_blank_text_and_no_output() -> None:
    rows = [
        row([reasoning("I should call the tool.")], task=0, finish="length"),
        row([message("  \n ")], task=1),
        row([], task=2),
        row([message("4")], task=3),  # near miss: one character is an answer
        row([reasoning("Let me compute."), call("calculate", '{"expression": "2+2"}')], task=4, tools=[CALCULATOR]),
        row(
            [call("calculate", '{"expression": "2+2"}'), output("c1", "4"), message("It is 4.")],
            task=5,
            tools=[CALCULATOR],
        ),
    ]
    result = check(rows)
    assert fired(result, "empty_completion") == [True, True, True, False, False, False]
    assert evidence(result, "empty_completion")[:3] == [
        "the final turn has only reasoning (23 chars)",
        'answer too short: "  \\n "',
        "no output items",
    ]
    assert fired(check(rows[3:4], empty_min_chars=2), "empty_completion") == [True]


def test_final_turn_is_the_last_model_turn_not_trailing_tool_outputs() -> None:
    ended_on_tools = row(
        [message("Let me check."), call("calculate", '{"expression": "1+1"}'), output("c1", "2")],
        tools=[CALCULATOR],
        finish="tool_calls",
    )
    answered_before_tools = row(
        [
            message("It is 2."),
            call("calculate", '{"expression": "1+1"}'),
            output("c1", "2"),
            reasoning("The tool agrees."),
        ],
        tools=[CALCULATOR],
    )
    assert fired(check([ended_on_tools, answered_before_tools]), "empty_completion") == [False, True]


def test_zero_completion_tokens() -> None:
    rows = [
        row([message("")], output_tokens=0),
        row([message("x")], output_tokens=1),
        row([message("x")], output_tokens=None),
    ]
    result = check(rows)
    assert fired(result, "zero_completion_tokens") == [True, False, None]
    assert (
        evidence(result, "zero_completion_tokens")[0] == "usage.output_tokens = 0 (1 output items, 0 chars of answer)"
    )


def test_token_count_mismatch_needs_ids_and_honours_the_tolerance() -> None:
    rows = [
        row([reasoning("r"), message("four", gen=5)], output_tokens=7),
        row([message("four", gen=7)], output_tokens=7),
        row([message("four")], output_tokens=7),  # no ids: unobserved
    ]
    result = check(rows)
    assert fired(result, "token_count_mismatch") == [True, False, None]
    assert evidence(result, "token_count_mismatch")[0] == "5 generation token ids, usage.output_tokens = 7"
    assert fired(check(rows, token_count_tolerance=2), "token_count_mismatch") == [False, False, None]


def test_multi_call_token_ids_are_summed_over_calls() -> None:
    items = [call("calculate", '{"expression": "2+2"}'), output("c1", "4"), message("4", gen=4)]
    items[0] |= {"prompt_token_ids": [1], "generation_token_ids": [5, 6, 7], "generation_log_probs": [-1.0] * 3}
    assert fired(check([row(items, tools=[CALCULATOR], output_tokens=7)]), "token_count_mismatch") == [False]
    assert fired(check([row(items, tools=[CALCULATOR], output_tokens=4)]), "token_count_mismatch") == [True]


def test_runaway_generation_is_a_loop_at_the_token_limit() -> None:
    rows = [
        row([message(prose(40) + " " + LOOP)], finish="length"),
        row([message(prose(400))], finish="length"),  # near miss: cut at the limit, but no loop
        row([message(prose(40) + " " + LOOP)], finish="stop"),  # a loop without the limit: repetition_loop's
    ]
    result = check(rows)
    assert fired(result, "runaway_generation") == [True, False, False]
    text = evidence(result, "runaway_generation")[0]
    assert text is not None and text.startswith("at the token limit, answer: ")
    assert "so we add one more." in text and "covers" in text
    assert fired(result, "repetition_loop") == [False, False, True]


def test_runaway_generation_is_unobserved_without_a_stop_reason() -> None:
    unknown = row([message(LOOP)])
    for key in ("finish_reason", "end_reason"):
        unknown.pop(key)
    unknown["response"]["status"] = None
    assert fired(check([unknown]), "runaway_generation") == [None]
    assert fired(check([unknown]), "repetition_loop") == [True]


def test_agent_end_reason_max_rollout_tokens_is_a_limit() -> None:
    hit = row([message(LOOP)], finish="stop", end_reason="max_rollout_tokens")
    result = check([hit])
    assert fired(result, "runaway_generation") == [True] and fired(result, "repetition_loop") == [False]


def test_repetition_loop_near_misses() -> None:
    twice = prose(150, seed=1) + " We add the carry. We add the carry. " + prose(60, seed=2)
    short_loop = "ok ok ok ok ok ok"  # below loop_min_chars
    tail_mostly_prose = "Again and again. " * 20 + prose(300, seed=3)
    rows = [row([message(t)], task=i) for i, t in enumerate([twice, short_loop, tail_mostly_prose])]
    assert fired(check(rows), "repetition_loop") == [False, False, False]


def test_repetition_loop_counter_loops_and_reasoning_loops() -> None:
    counter = " ".join(f"Step {i}: add one to the total." for i in range(60))
    rows = [row([message(counter)], task=0), row([reasoning("Wait, " * 300), message("4")], task=1)]
    assert fired(check(rows), "repetition_loop") == [True, True]
    assert fired(check(rows, loop_ignore_digits=False), "repetition_loop") == [False, True]
    assert evidence(check(rows), "repetition_loop")[1] == 'reasoning: " Wait," ×299 covers 100% of the last 1799 chars'


def test_loop_on_non_ascii_text() -> None:
    looping = prose(30) + " " + "答案是四。" * 120 + "答"
    result = check([row([message(looping)])])
    assert fired(result, "repetition_loop") == [True]
    assert 'answer: "案是四。答" ×120' in (evidence(result, "repetition_loop")[0] or "")


def test_reasoning_leak_markers_and_repeated_reasoning() -> None:
    thought = "First I add two and two, carrying nothing, which gives four in total."
    rows = [
        row([message("<think>2+2=4</think> The answer is 4.")], task=0),
        row([message("The answer is 4.</think>")], task=1),
        row([reasoning(thought), message(thought + " So: 4.")], task=2),
        row(
            [reasoning(thought), message("I think the answer is four, which gives four in total.")], task=3
        ),  # near miss
        row([reasoning("Short."), message("Short. 4")], task=4),  # reasoning below the minimum: not compared
        row(
            [
                reasoning(
                    "We scan the edges that point to the node.\n\nFinal Answer: [eccbc87e4b, a87ff679a2, e4da3b7fbb]"
                ),
                message("Its parents are:\n\nFinal Answer: [eccbc87e4b, a87ff679a2, e4da3b7fbb]"),
            ],
            task=5,
        ),  # near miss (from NeMo Gym's graphwalks example): the answer restates the reasoning's conclusion
    ]
    result = check(rows)
    assert fired(result, "reasoning_leak") == [True, True, True, False, False, False]
    assert evidence(result, "reasoning_leak")[:3] == [
        'the answer contains "<think>"',
        'the answer contains "</think>"',
        'the answer repeats the reasoning: "First I add two and two, carrying nothing, which"',
    ]
    assert fired(check(rows[:2], reasoning_markers=("<reasoning>",)), "reasoning_leak") == [False, False]


@pytest.mark.parametrize(
    ("arguments", "name", "problem"),
    [
        ('{"expression": "2+', "calculate", 'calculate: arguments are not JSON: "{"expression": "2+"'),
        ('{"precision": 2}', "calculate", 'calculate: arguments: missing required key "expression"'),
        ('{"expression": 5}', "calculate", "calculate: expression: expected string, got integer 5"),
        (
            '{"expression": "1", "precision": 1.5}',
            "calculate",
            "calculate: precision: expected integer, got number 1.5",
        ),
        ('{"expression": "1", "mode": "fast"}', "calculate", 'calculate: mode: "fast" is not one of ["exact","float"]'),
        ('{"expression": "1", "verbose": true}', "calculate", 'calculate: arguments: unknown key "verbose"'),
        ('"{\\"expression\\": \\"1\\"}"', "calculate", "calculate: arguments are a JSON string (encoded twice?)"),
        ("[1, 2]", "calculate", "calculate: arguments are a JSON array, not an object"),
        ('{"expression": "1"}', "calculator", 'unknown tool "calculator" (declared: calculate)'),
    ],
)
def test_malformed_tool_call_fires(arguments: str, name: str, problem: str) -> None:
    rollout = row([call(name, arguments), output("c1", "1"), message("1")], tools=[CALCULATOR])
    result = check([rollout])
    assert fired(result, "malformed_tool_call") == [True]
    assert (evidence(result, "malformed_tool_call")[0] or "").startswith(problem)


def test_malformed_tool_call_near_misses_and_unobserved() -> None:
    good = [
        call("calculate", '{"expression": "1", "precision": 2.0, "mode": "exact"}', "a"),
        output("a", "1"),
        call("calculate", "", "b"),
        output("b", "Error: missing expression"),
        message("1"),
    ]
    rows = [
        row(good[:2] + [message("1")], task=0, tools=[CALCULATOR]),
        row([call("calculate", '{"expression": 1}'), output("c1", "1"), message("1")], task=1, tools=[CALCULATOR]),
        row([call("search", '{"q": "x"}'), output("c1", "none"), message("no")], task=2),  # no tools declared
        row([call("search", "{not json"), output("c1", "none"), message("no")], task=3),
        row([message("no tools at all")], task=4),
    ]
    result = check(rows)
    assert fired(result, "malformed_tool_call") == [False, True, None, True, False]
    assert fired(check(rows[1:2], tool_schema=False), "malformed_tool_call") == [False]
    two_bad = row(
        [call("calculate", "{", "a"), output("a", "x"), call("nope", "{}", "b"), output("b", "x"), message("x")],
        tools=[CALCULATOR],
    )
    assert (evidence(check([two_bad]), "malformed_tool_call")[0] or "").endswith("(+1 more)")
    assert fired(check([row(good, tools=[CALCULATOR])]), "malformed_tool_call") == [True]  # "" lacks "expression"


def test_tool_calls_in_chat_completions_shape_are_understood() -> None:
    chat_tool = {"type": "function", "function": {"name": "calculate", "parameters": CALCULATOR["parameters"]}}
    rows = [row([call("calculate", '{"expression": 3}'), output("c1", "3"), message("3")], tools=[chat_tool])]
    assert (evidence(check(rows), "malformed_tool_call")[0] or "").startswith("calculate: expression: expected string")


def test_tool_error_loop() -> None:
    def rollout(outputs: list[str], task: int) -> dict[str, object]:
        items = []
        for i, text in enumerate(outputs):
            items += [call("calculate", '{"expression": "1/0"}', f"c{i}"), output(f"c{i}", text)]
        return row(items + [message("I give up.")], task=task, tools=[CALCULATOR])

    rows = [
        rollout(["Error: division by zero"] * 3, 0),
        rollout(["Error: division by zero"] * 2 + ["4"], 1),  # near miss: twice
        rollout([f"Error: bad character at position {i}" for i in range(3)], 2),  # same error, other digits
        rollout(["4"] * 3, 3),  # the same output three times, but not an error
        rollout(['{"error": "unknown expression"}'] * 4, 4),
    ]
    result = check(rows)
    assert fired(result, "tool_error_loop") == [True, False, True, False, True]
    assert evidence(result, "tool_error_loop")[0] == 'calculate ×3: "Error: division by zero"'
    assert fired(check(rows, tool_error_ignore_digits=False), "tool_error_loop")[2] is False
    assert fired(check(rows, tool_error_min_repeats=4), "tool_error_loop") == [False, False, False, False, True]


def test_identical_group() -> None:
    same = [row([message("It is 4.")], task=0, rollout=i) for i in range(3)]
    differ = [row([message("It is 4.")], task=1, rollout=0), row([message("It is 5.")], task=1, rollout=1)]
    alone = [row([message("It is 4.")], task=2)]
    greedy = [row([message("It is 4.")], task=3, rollout=i, temperature=0.0) for i in range(2)]
    calls = [
        row(
            [call("calculate", json.dumps({"expression": str(i)})), output("c1", "1"), message("1")],
            task=4,
            rollout=i,
            tools=[CALCULATOR],
        )
        for i in range(2)
    ]  # same answer, different tool calls
    result = check(same + differ + alone + greedy + calls)
    assert fired(result, "identical_group") == [True] * 3 + [False] * 2 + [None] + [None] * 2 + [False] * 2
    assert evidence(result, "identical_group")[0] == 'all 3 completions of task 0 are identical: "It is 4."'


def test_task_always_unhealthy() -> None:
    broken = [row([reasoning("hmm")], task=0, rollout=i) for i in range(2)]
    mixed = [row([reasoning("hmm")], task=1, rollout=0), row([message("4")], task=1, rollout=1)]
    single = [row([reasoning("hmm")], task=2)]
    result = check(broken + mixed + single)
    assert fired(result, "task_always_unhealthy") == [True, True, False, False, None]
    assert evidence(result, "task_always_unhealthy")[0] == "2/2 rollouts of task 0 unhealthy: empty_completion ×2"
    assert fired(check(single, task_min_rollouts=1), "task_always_unhealthy") == [True]


def test_verdicts_unobserved_only_for_checks_active_in_the_run() -> None:
    without_ids = [row([message("It is 4.")], task=i) for i in range(2)]
    result = check(without_ids)
    assert result.table["verdict"].to_list() == ["healthy", "healthy"]
    assert result.summary()["inactive_checks"] == ["token_count_mismatch", "identical_group", "task_always_unhealthy"]
    mixed = [row([message("It is 4.", gen=10)], task=0), row([message("It is 4.")], task=1), row([message("")], task=2)]
    verdicts = check(mixed, skip_checks=("task_always_unhealthy",)).verdicts()
    assert verdicts["verdict"].to_list() == ["healthy", "unobserved", "unhealthy"]
    assert verdicts["checks"].to_list() == [[], [], ["empty_completion"]]
    assert [json.loads(e) for e in verdicts["evidence"]] == [
        {},
        {},
        {"empty_completion": "the final turn has no text and no tool call"},
    ]


def test_check_selection_and_unknown_ids() -> None:
    result = check_run([row([message("")])], QualityConfig(checks=("empty_completion", "reasoning_leak")))
    assert result.checks == ("empty_completion", "reasoning_leak")
    with pytest.raises(KeyError, match="unknown check 'nope'"):
        check_run([row([message("")])], QualityConfig(skip_checks=("nope",)))
    with pytest.raises(ValueError, match="tool_error_pattern"):
        QualityConfig(tool_error_pattern="(")


def test_each_row_is_judged_against_its_own_tool_list() -> None:
    def variant(allowed: str) -> dict[str, object]:
        tool = json.loads(json.dumps(CALCULATOR))
        tool["parameters"]["properties"]["mode"]["enum"] = [allowed]
        return tool

    rows = [
        row(
            [call("calculate", json.dumps({"expression": "1", "mode": m})), output("c1", "1"), message("1")],
            task=t,
            tools=[variant(m)],
        )
        for t, m in enumerate(["exact", "float"])
    ]
    assert fired(check(rows), "malformed_tool_call") == [False, False]


def test_an_empty_list_of_checks_runs_every_check() -> None:
    """The UI's run form shows `checks` as a list and can send it empty: every registered check still runs."""
    assert QualityConfig(checks=[]).checks is None and QualityConfig(checks=["empty_completion"]).checks == (
        "empty_completion",
    )

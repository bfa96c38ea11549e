"""SFT: row rules, dedupe, best-of-n, and the exact rows of every format (tool-call conversation included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rollouts.training import ProcessConfig, load_rollouts, process, select

FIXTURES = Path(__file__).parents[1] / "fixtures" / "process"
GYM = str(FIXTURES / "gym.jsonl")

P0 = [{"role": "user", "content": "What is 2+2? Answer in \\boxed{}."}]
P1 = [{"role": "system", "content": "Use the calculator."}, {"role": "user", "content": "What is 6*7?"}]
P2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say no."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


TOOL_TURN_OPENAI = [
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression":"6*7"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "42"},
    assistant("The answer is 42."),
]
TOOL_TURN_TRL = [
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}
        ],
    },
    {"role": "tool", "name": "calculator", "tool_call_id": "call_a", "content": "42"},
    assistant("The answer is 42."),
]


def read_jsonl(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def kept_rows(**options: Any) -> list[int]:
    selection = select(load_rollouts([GYM]), ProcessConfig(objective="sft", **{"min_reward": None, **options}))
    assert selection.selected_data is not None
    return selection.selected_data["row"].to_list()


def test_every_format_exactly(tmp_path: Path) -> None:
    config = ProcessConfig(objective="sft", formats=("openai", "trl", "trl-prompt-completion"), min_reward=None)
    result = process([GYM], config, str(tmp_path))
    assert read_jsonl(result.files["openai"]) == [
        {"messages": [*P0, assistant("It is \\boxed{4}.")]},
        {"messages": [*P1, *TOOL_TURN_OPENAI], "tools": TOOLS},
        {"messages": [*P2, assistant("No.")]},
    ]
    assert read_jsonl(result.files["trl"]) == [
        {"messages": [*P0, assistant("It is \\boxed{4}.")]},
        {"messages": [*P1, *TOOL_TURN_TRL], "tools": TOOLS},
        {"messages": [*P2, assistant("No.")]},
    ]
    assert read_jsonl(result.files["trl-prompt-completion"]) == [
        {"prompt": P0, "completion": [assistant("It is \\boxed{4}.")]},
        # one row per model turn: the tool result is prompt, never completion
        {"prompt": P1, "completion": TOOL_TURN_TRL[:1], "tools": TOOLS},
        {"prompt": [*P1, *TOOL_TURN_TRL[:2]], "completion": TOOL_TURN_TRL[2:], "tools": TOOLS},
        {"prompt": P2, "completion": [assistant("No.")]},
    ]
    assert result.rows == {"openai": 3, "trl": 3, "trl-prompt-completion": 4}
    assert Path(result.card_json).exists() and Path(result.card_markdown).read_text().startswith("# Data card: sft")


def test_card_says_what_each_rule_dropped() -> None:
    card = select(load_rollouts([GYM]), ProcessConfig(objective="sft", min_reward=0.5)).card
    assert [(d.rule, d.count) for d in card.dropped] == [
        ("length_truncated", 1),
        ("below_min_reward", 4),
        ("duplicate", 1),
        ("not_best_of_n", 1),
    ]
    assert (card.rows_in, card.rows_out, card.groups_in, card.groups_out) == (9, 2, 3, 2)
    assert card.rows_in == card.rows_out + sum(d.count for d in card.dropped)
    assert card.reward_before.count == 9 and card.reward_after.min == 1.0


@pytest.mark.parametrize(
    ("options", "rows"),
    [
        ({}, [0, 4, 7]),
        ({"min_reward": 0.5}, [0, 4]),
        ({"per_prompt": 2}, [0, 3, 4, 5, 7]),  # r2 of task 0 duplicates r0; ties keep the lower rollout index
        ({"per_prompt": 9, "drop_duplicates": False, "keep_length_truncated": True}, list(range(9))),
        ({"max_turns": 1}, [0, 5, 7]),  # the tool conversations take two model turns
        ({"max_output_tokens": 11}, [0, 5, 7]),
    ],
)
def test_rules(options: dict[str, Any], rows: list[int]) -> None:
    assert kept_rows(**options) == rows


def test_failed_rollouts_of_a_run_are_counted() -> None:
    card = select(load_rollouts([str(FIXTURES / "run")]), ProcessConfig(objective="sft")).card
    assert ("failed", 1) in [(d.rule, d.count) for d in card.dropped]
    assert card.rows_out == 2

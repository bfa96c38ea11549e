"""DPO: pairing strategies, margins, ties, caps, length balancing, and the exact rows of every format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rollouts.training import ProcessConfig, load_rollouts, process, select

from .test_process_sft import GYM, P0, P1, TOOL_TURN_TRL, TOOLS, assistant, read_jsonl

FIXTURES = Path(__file__).parents[1] / "fixtures" / "process"


def pairs(**options: Any) -> tuple[list[tuple[int, int, float, int]], dict[str, int], dict[str, int]]:
    selection = select(load_rollouts([GYM]), ProcessConfig(objective="dpo", **options))
    assert selection.selected_data is not None
    rows = selection.selected_data.select("chosen_row", "rejected_row", "margin", "pair_rank").rows()
    card = selection.card
    return rows, {d.rule: d.count for d in card.pair_drops}, {d.rule: d.count for d in card.group_drops}


def test_every_format_exactly(tmp_path: Path) -> None:
    config = ProcessConfig(objective="dpo", formats=("trl", "openai", "trl-standard", "nemo-rl"))
    result = process([GYM], config, str(tmp_path))
    four, five = [assistant("It is \\boxed{4}.")], [assistant("It is \\boxed{5}.")]
    assert read_jsonl(result.files["trl"]) == [
        {"prompt": P0, "chosen": four, "rejected": five},
        # TRL trains on all of chosen/rejected: each side is the first model turn where they differ, never a tool result
        {"prompt": P1, "chosen": TOOL_TURN_TRL[:1], "rejected": [assistant("I think 41.")], "tools": TOOLS},
    ]
    assert read_jsonl(result.files["openai"]) == [
        {"input": {"messages": P0}, "preferred_output": four, "non_preferred_output": five},
    ]
    assert read_jsonl(result.files["trl-standard"]) == [
        {
            "prompt": "What is 2+2? Answer in \\boxed{}.\n\n",
            "chosen": "It is \\boxed{4}.",
            "rejected": "It is \\boxed{5}.",
        },
    ]  # the tool pair is not plain text: its final answer alone would be trained without the call that led to it
    # NeMo RL trains only the final message of a completion: the tool-call pair is left out, and said so
    assert read_jsonl(result.files["nemo-rl"]) == [
        {"context": P0, "completions": [{"rank": 0, "completion": four}, {"rank": 1, "completion": five}]},
    ]
    notes = {o.format: o.note for o in result.card.outputs}
    assert notes["openai"] is not None and notes["openai"].startswith("1 pairs skipped")
    assert "cannot express tool-call pairs" in notes["openai"] and "dpo `trl`" in notes["openai"]
    assert notes["trl-standard"] is not None and notes["trl-standard"].startswith("1 pairs skipped")
    assert "cannot carry tool calls" in notes["trl-standard"] and "dpo `trl`" in notes["trl-standard"]
    assert (
        notes["nemo-rl"] is not None and "final message" in notes["nemo-rl"] and "ignores `tools`" in notes["nemo-rl"]
    )
    assert result.card.unit == "pairs" and result.card.rows_out == 2


@pytest.mark.parametrize(
    ("options", "expected", "pair_drops"),
    [
        ({}, [(0, 1, 1.0, 1), (4, 5, 1.0, 1)], {}),
        (
            {"pairing": "all-pairs"},
            [(0, 1, 1.0, 1), (0, 3, 0.5, 2), (3, 1, 0.5, 3), (4, 5, 1.0, 1), (4, 6, 1.0, 2)],
            {"tie": 1},
        ),
        (
            {"pairing": "all-pairs", "min_margin": 0.6},
            [(0, 1, 1.0, 1), (4, 5, 1.0, 1), (4, 6, 1.0, 2)],
            {"tie": 1, "margin_below_min": 2},
        ),
        (
            {"pairing": "all-pairs", "max_pairs_per_prompt": 1},
            [(0, 1, 1.0, 1), (4, 5, 1.0, 1)],
            {"tie": 1, "over_cap": 3},
        ),
        ({"pairing": "top-bottom-k", "top_k": 1}, [(0, 1, 1.0, 1), (4, 5, 1.0, 1)], {}),
        (
            {"pairing": "top-bottom-k", "top_k": 2},
            [(0, 1, 1.0, 1), (0, 3, 0.5, 2), (3, 1, 0.5, 3), (4, 5, 1.0, 1), (4, 6, 1.0, 2)],
            {"tie": 1},
        ),
        # output tokens: task 0 -> 10, 12, 30; task 1 -> 20, 5, 15
        ({"max_length_ratio": 2.0}, [(0, 1, 1.0, 1), (4, 6, 1.0, 1)], {"tie": 1, "length_ratio": 3}),
        ({"pairing": "all-pairs", "max_length_ratio": 1.3}, [(0, 1, 1.0, 1)], {"tie": 1, "length_ratio": 4}),
    ],
)
def test_strategies(
    options: dict[str, Any], expected: list[tuple[int, int, float, int]], pair_drops: dict[str, int]
) -> None:
    got, drops, _ = pairs(**options)
    assert got == expected
    assert drops == pair_drops


def test_group_reasons_and_ties() -> None:
    _, _, groups = pairs()
    assert groups == {"fewer_than_2_candidates": 1}  # task 2: its other rollout was cut off
    _, _, groups = pairs(keep_length_truncated=True)
    assert groups == {"all_rewards_tied": 1}  # a tie is never a pair
    got, _, groups = pairs(min_margin=1.5)
    assert got == [] and groups == {"margin_below_min": 2, "fewer_than_2_candidates": 1}


def test_identical_completions_never_pair(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in Path(GYM).read_text().splitlines()]
    rows[2]["reward"] = 0.0  # same completion as row 0, lower reward: a noisy verifier
    path = tmp_path / "noisy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    selection = select(
        load_rollouts([str(path)]), ProcessConfig(objective="dpo", pairing="all-pairs", drop_duplicates=False)
    )
    assert selection.selected_data is not None
    got = selection.selected_data.select("chosen_row", "rejected_row").rows()
    assert (0, 2) not in got and (0, 1) in got
    assert {d.rule: d.count for d in selection.card.pair_drops}["identical_completions"] == 1


def test_card_distributions() -> None:
    card = select(load_rollouts([GYM]), ProcessConfig(objective="dpo", pairing="all-pairs")).card
    assert card.distributions["margin"].histogram == [(0.5, 0.5, 2), (1.0, 1.0, 3)]
    assert card.distributions["pairs_per_prompt"].histogram == [(2.0, 2.0, 1), (3.0, 3.0, 1)]
    assert [(d.rule, d.count) for d in card.dropped] == [("length_truncated", 1), ("duplicate", 1)]
    assert "| pairs out | 5 |" in card.to_markdown()


def test_failed_rollouts_of_a_run_are_counted() -> None:
    card = select(load_rollouts([str(FIXTURES / "run")]), ProcessConfig(objective="dpo")).card
    assert [(d.rule, d.count) for d in card.dropped] == [("failed", 1)]
    assert card.rows_out == 1  # task 1 has one successful rollout left

"""RL: group statistics, advantages under each scale, the dynamic-sampling filter, and the Parquet / JSONL rows."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rollouts.training import ProcessConfig, load_rollouts, process, select

FIXTURES = Path(__file__).parents[1] / "fixtures" / "process"
GYM = str(FIXTURES / "gym.jsonl")
REWARDS = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 2, 2]
EPS = 1e-6


def selected(**options: Any) -> pl.DataFrame:
    selection = select(load_rollouts([GYM]), ProcessConfig(objective="rl", **options))
    assert selection.selected_data is not None
    return selection.selected_data


def test_group_stats_and_group_scaled_advantages() -> None:
    df = selected()
    assert df["row"].to_list() == list(range(9))
    assert df["group_size"].to_list() == [4, 4, 4, 4, 3, 3, 3, 2, 2]
    assert df["group_mean"].to_list() == pytest.approx([0.625] * 4 + [1 / 3] * 3 + [0.0] * 2)
    std0, std1 = statistics.stdev(REWARDS[:4]), statistics.stdev(REWARDS[4:7])
    assert df["group_std"].to_list() == pytest.approx([std0] * 4 + [std1] * 3 + [0.0] * 2)
    assert df["advantage"].to_list() == pytest.approx(
        [0.375 / (std0 + EPS), -0.625 / (std0 + EPS), 0.375 / (std0 + EPS), -0.125 / (std0 + EPS)]
        + [(2 / 3) / (std1 + EPS), (-1 / 3) / (std1 + EPS), (-1 / 3) / (std1 + EPS), 0.0, 0.0]
    )


@pytest.mark.parametrize("scale", ["batch", "none"])
def test_other_scales(scale: str) -> None:
    df = selected(advantage_scale=scale)
    means = [0.625, 1 / 3, 0.0]
    divisor = statistics.stdev(REWARDS) + EPS if scale == "batch" else 1.0
    assert df["advantage"].to_list() == pytest.approx(
        [(r - means[g]) / divisor for r, g in zip(REWARDS, GROUPS, strict=True)]
    )


@pytest.mark.parametrize(
    ("options", "rows", "group_drops"),
    [
        ({"drop_uniform_groups": True}, list(range(7)), {"uniform_rewards": 1}),
        ({"keep_mean_between": (0.5, 1.0)}, [0, 1, 2, 3], {"mean_out_of_range": 2}),
        (
            {"drop_uniform_groups": True, "keep_mean_between": (0.0, 0.5)},
            [4, 5, 6],
            {"uniform_rewards": 1, "mean_out_of_range": 1},
        ),
        ({"drop_uniform_groups": True, "uniform_tolerance": 1.0}, [], {"uniform_rewards": 3}),
    ],
)
def test_dynamic_sampling_filter(options: dict[str, Any], rows: list[int], group_drops: dict[str, int]) -> None:
    selection = select(load_rollouts([GYM]), ProcessConfig(objective="rl", **options))
    assert selection.selected_data is not None and selection.selected_data["row"].to_list() == rows
    card = selection.card
    assert {d.rule: d.count for d in card.group_drops} == group_drops
    assert card.groups_out == 3 - sum(group_drops.values())
    assert f"{card.groups_out} of 3 groups passed" in card.notes[0]


def test_parquet_and_jsonl_rows(tmp_path: Path) -> None:
    result = process([GYM], ProcessConfig(objective="rl", formats=("parquet", "jsonl")), str(tmp_path))
    table = pl.read_parquet(result.files["parquet"])
    assert table.columns == [
        "group_id", "rollout_id", "task_index", "rollout_index", "prompt", "tools", "output", "extra", "reward",
        "advantage", "group_mean", "group_std", "group_size", "finish_reason", "output_tokens", "num_turns",
        "prompt_token_ids", "generation_token_ids", "generation_log_probs",
    ]  # fmt: skip
    assert table.schema["generation_token_ids"] == pl.List(pl.List(pl.Int32))
    lines = [json.loads(line) for line in Path(result.files["jsonl"]).read_text().splitlines()]
    assert len(lines) == table.height == 9
    first = lines[0]
    assert first["group_id"] == "gym#0" and first["task_index"] == 0 and first["rollout_index"] == 0
    assert first["extra"] == {"agent_ref": {"name": "math"}, "expected_answer": "4"}  # the row's other keys, kept
    assert first["prompt"] == [{"role": "user", "content": "What is 2+2? Answer in \\boxed{}."}]
    assert first["tools"] is None and first["output"][1]["content"][0]["text"] == "It is \\boxed{4}."
    assert (first["prompt_token_ids"], first["generation_token_ids"], first["generation_log_probs"]) == (
        [[1, 2, 3]],
        [[7, 8]],
        [[-0.5, -0.25]],
    )
    assert lines[4]["tools"][0]["name"] == "calculator" and [i["type"] for i in lines[4]["output"]] == [
        "function_call", "function_call_output", "message",
    ]  # fmt: skip
    for line, row in zip(lines, table.iter_rows(named=True), strict=True):
        assert line["prompt"] == json.loads(row["prompt"]) and line["output"] == json.loads(row["output"])
        assert line["extra"] == json.loads(row["extra"] or "{}")
        assert line["advantage"] == pytest.approx(row["advantage"]) and line["rollout_id"] == row["rollout_id"]


def test_run_input_counts_failures_and_keeps_only_ok_rows(tmp_path: Path) -> None:
    result = process([str(FIXTURES / "run")], ProcessConfig(objective="rl"), str(tmp_path))
    card = result.card
    assert [(d.rule, d.count) for d in card.dropped] == [("failed", 1)]
    assert (card.rows_in, card.rows_out) == (5, 4)
    table = pl.read_parquet(result.files["parquet"])
    assert "generation_token_ids" not in table.columns  # no token ids in this run
    assert table["rollout_id"].to_list() == ["run1-0-0", "run1-0-1", "run1-0-2", "run1-1-0"]
    saved = json.loads(Path(result.card_json).read_text())
    assert saved["dropped"] == [{"rule": "failed", "count": 1, "why": card.dropped[0].why}]


def test_the_card_never_prints_minus_zero() -> None:
    from rollouts.process.card import _cell
    from rollouts.report.histogram import bin_label

    assert (_cell(-0.0), _cell(-1e-9 * 0), bin_label(-0.0, -0.0), bin_label(-0.0, 0.5)) == ("0", "0", "0", "[0, 0.5)")

"""Property tests over random groups: pair invariants, SFT thresholds and best-of-n, zero-sum RL advantages."""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollouts.process import ROLLOUT_SCHEMA, BadRows, LoadedRollouts, ProcessConfig
from rollouts.training import select

REWARDS = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(-2, 2, allow_nan=False, width=32))
ROLLOUT = st.tuples(
    REWARDS,
    st.integers(0, 3),  # completion key: small range -> duplicates
    st.sampled_from(["ok"] * 8 + ["failed"]),
    st.sampled_from(["stop"] * 6 + ["length", "tool_calls"]),
    st.integers(1, 60),  # output tokens
)
GROUPS = st.lists(st.lists(ROLLOUT, min_size=1, max_size=7), min_size=1, max_size=6)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loaded(groups: list[list[tuple[Any, ...]]]) -> LoadedRollouts:
    rows = []
    for g, rollouts in enumerate(groups):
        for i, (reward, key, status, finish, tokens) in enumerate(rollouts):
            rows.append(
                {
                    "row": len(rows), "source": "s", "file": "f", "line": len(rows) + 1, "group_id": f"s#{g}",
                    "task_index": g, "rollout_index": i, "rollout_id": f"{g}-{i}", "status": status,
                    "finish_reason": None if status == "failed" else finish,
                    "reward": None if status == "failed" else reward, "output_tokens": tokens,
                    "output_chars": tokens * 4, "num_turns": 1, "final_turn": "assistant", "completion_key": key,
                    "prompt_key": 0, "prompt": "[]", "tools": None, "output": "[]", "error": None,
                }
            )  # fmt: skip
    frame = pl.DataFrame(rows, schema_overrides=ROLLOUT_SCHEMA).select(
        [pl.col(c) if c in rows[0] else pl.lit(None, d).alias(c) for c, d in ROLLOUT_SCHEMA.items()]
    )
    return LoadedRollouts(
        inputs=["s"],
        files=1,
        rows_read=len(rows),
        rows=len(rows),
        bad_rows=BadRows(),
        has_token_ids=False,
        frame_data=frame,
    )


@SETTINGS
@given(
    GROUPS,
    st.sampled_from(["best-worst", "all-pairs", "top-bottom-k"]),
    st.sampled_from([0.0, 0.25, 0.5]),
    st.sampled_from([None, 1, 2]),
    st.sampled_from([None, 1.5, 3.0]),
    st.integers(1, 3),
)
def test_dpo_pairs(groups: Any, pairing: str, margin: float, cap: int | None, ratio: float | None, k: int) -> None:
    data = loaded(groups)
    config = ProcessConfig(
        objective="dpo", pairing=pairing, min_margin=margin, max_pairs_per_prompt=cap, max_length_ratio=ratio, top_k=k
    )  # type: ignore[arg-type]
    selection = select(data, config)
    pairs = selection.selected_data
    assert pairs is not None
    frame = data.frame_data
    assert frame is not None
    by_row = {r["row"]: r for r in frame.iter_rows(named=True)}
    for p in pairs.iter_rows(named=True):
        chosen, rejected = by_row[p["chosen_row"]], by_row[p["rejected_row"]]
        assert chosen["group_id"] == rejected["group_id"] == p["group_id"]  # never across groups
        assert p["chosen_reward"] == chosen["reward"] and p["rejected_reward"] == rejected["reward"]
        assert p["chosen_reward"] - p["rejected_reward"] > 0  # a tie is never a pair
        assert p["chosen_reward"] - p["rejected_reward"] >= margin
        assert chosen["completion_key"] != rejected["completion_key"]
        assert chosen["status"] == rejected["status"] == "ok" and "length" not in (
            chosen["finish_reason"],
            rejected["finish_reason"],
        )
        if ratio is not None:
            a, b = chosen["output_tokens"], rejected["output_tokens"]
            assert max(a, b) / min(a, b) <= ratio
    per_group = pairs.group_by("group_id").len()["len"].to_list()
    if cap is not None:
        assert all(n <= cap for n in per_group)
    if pairing == "best-worst":
        assert all(n == 1 for n in per_group)
    assert pairs.select(pl.struct("chosen_row", "rejected_row").is_unique().all()).item()


@SETTINGS
@given(GROUPS, st.sampled_from([None, 0.0, 0.5]), st.integers(1, 3))
def test_sft_rows(groups: Any, min_reward: float | None, per_prompt: int) -> None:
    data = loaded(groups)
    selection = select(data, ProcessConfig(objective="sft", min_reward=min_reward, per_prompt=per_prompt))
    kept = selection.selected_data
    frame = data.frame_data
    assert kept is not None and frame is not None
    card = selection.card
    assert card.rows_in == card.rows_out + sum(d.count for d in card.dropped)
    rows = frame.filter(pl.col("row").is_in(kept["row"].implode()))
    assert rows["status"].to_list() == ["ok"] * rows.height and "length" not in rows["finish_reason"].to_list()
    if min_reward is not None:
        assert all(r >= min_reward for r in rows["reward"])
    for (group,), g in rows.group_by("group_id"):
        assert g.height <= per_prompt
        assert g["completion_key"].is_unique().all()
        eligible = frame.filter(
            (pl.col("group_id") == group) & (pl.col("status") == "ok") & (pl.col("finish_reason") != "length")
            & (pl.col("reward") >= (min_reward if min_reward is not None else float("-inf")))
        )  # fmt: skip
        best_per_key = eligible.group_by("completion_key").agg(pl.col("reward").max())["reward"].sort(descending=True)
        assert sorted(g["reward"], reverse=True) == best_per_key.head(per_prompt).to_list()  # best-of-n


@SETTINGS
@given(GROUPS, st.sampled_from(["group", "batch", "none"]), st.booleans())
def test_rl_advantages_sum_to_zero(groups: Any, scale: str, drop_uniform: bool) -> None:
    selection = select(
        loaded(groups), ProcessConfig(objective="rl", advantage_scale=scale, drop_uniform_groups=drop_uniform)
    )  # type: ignore[arg-type]
    kept = selection.selected_data
    assert kept is not None
    sums = kept.group_by("group_id").agg(
        total=pl.col("advantage").sum(), n=pl.len(), spread=pl.col("reward").max() - pl.col("reward").min()
    )
    for total, n, spread in sums.select("total", "n", "spread").iter_rows():
        assert abs(total) <= 1e-6 * max(1.0, n) * 1e3  # float error only, amplified at most by 1/(std + eps)
        if drop_uniform:
            assert spread > 1e-6
    assert selection.card.groups_out == kept["group_id"].n_unique()

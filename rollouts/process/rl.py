"""RL selection: successful rollouts with group reward statistics and advantages, after the dynamic-sampling filter.

advantage = (reward - group mean) / (scale + 1e-6), with scale the group's sample std (`group`), the sample std of
all kept rewards (`batch`), or no scaling at all (`none`, no epsilon either). A group of one rollout has std 0.
Advantages of a group sum to 0 (up to float error) under every scale.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from .card import DataCard, distribution, drops_from_counts, per_bucket
from .config import ProcessConfig

ADVANTAGE_EPS = 1e-6
COLUMNS = ["row", "group_id", "status", "reward"]
ROW_RULES = {"failed": "the rollout failed (no reward): RL keeps only successful rollouts"}
GROUP_RULES = {
    "uniform_rewards": "all rewards of the group equal within the tolerance: no learning signal",
    "mean_out_of_range": "group mean reward outside --keep-mean-between",
}


def select_rl(frame: pl.LazyFrame, config: ProcessConfig, card: DataCard) -> pl.DataFrame:
    """Kept rows: row, group_id, reward, advantage, group_mean, group_std, group_size. The group rules look at one
    group, so a big input is judged a bucket of whole groups at a time (`group_buckets`); advantages after, on all."""
    failed, found = 0, []
    group_counts: Counter[str] = Counter()
    for bucket, part in per_bucket(frame, card):
        df = bucket.select(COLUMNS).collect()
        ok = df.filter(pl.col("status") == "ok")
        failed += df.height - ok.height
        kept, part.groups_in, bucket_counts = _judge_groups(ok, config)
        part.rows_in, part.reward_before = df.height, distribution(ok["reward"])
        group_counts.update(bucket_counts)
        found.append(kept)
    kept = found[0] if len(found) == 1 else _in_row_order(found)
    card.dropped = drops_from_counts({"failed": failed}, ROW_RULES)
    card.group_drops = drops_from_counts(group_counts, GROUP_RULES)
    card.groups_out = card.groups_in - sum(group_counts.values())
    card.notes.append(f"{card.groups_out} of {card.groups_in} groups passed the dynamic-sampling filter")
    centered = pl.col("reward") - pl.col("group_mean")
    if config.advantage_scale == "group":
        advantage = centered / (pl.col("group_std") + ADVANTAGE_EPS)
    elif config.advantage_scale == "batch":
        batch_std = kept["reward"].std(ddof=1) if kept.height > 1 else 0.0
        advantage = centered / ((batch_std or 0.0) + ADVANTAGE_EPS)  # type: ignore[operator]
    else:
        advantage = centered
    kept = kept.with_columns(advantage=advantage).select(
        "row", "group_id", "reward", "advantage", "group_mean", "group_std", "group_size"
    )
    card.rows_out = kept.height
    card.reward_after = distribution(kept["reward"])
    card.distributions["advantage"] = distribution(kept["advantage"])
    card.distributions["group_size"] = distribution(_kept_group_sizes(kept))
    return kept


def _in_row_order(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The buckets' kept rows in frame order, sorted a column at a time (each bucket's copy dropped once gathered):
    never two copies of every kept row (at 10M rollouts RL keeps ~10M rows of ~60 bytes)."""
    order = pl.concat([part["row"] for part in parts], rechunk=False).arg_sort()
    columns = []
    for name in parts[0].columns:
        column = pl.concat([part.drop_in_place(name) for part in parts], rechunk=False)
        columns.append(column.gather(order))
    return pl.DataFrame(columns)


def _kept_group_sizes(kept: pl.DataFrame) -> pl.Series:
    """The number of kept rows of each kept group: its group_size (whole groups of successful rows are kept), once
    per group. Counted from the sizes, not by grouping every row by its group id (a hash table as large as the
    input)."""
    sizes = kept.group_by("group_size").agg(pl.len())
    return sizes.select(pl.col("group_size").repeat_by(pl.col("len") // pl.col("group_size")).explode())["group_size"]


def _judge_groups(ok: pl.DataFrame, config: ProcessConfig) -> tuple[pl.DataFrame, int, dict[str, int]]:
    """The successful rows of whole groups that pass the group rules, with their group statistics; how many groups
    there were and what each rule dropped."""
    ok = ok.with_columns(
        group_mean=pl.col("reward").mean().over("group_id"),
        group_std=pl.col("reward").std(ddof=1).over("group_id").fill_null(0.0),
        group_size=pl.len().over("group_id").cast(pl.Int32),
        spread=(pl.col("reward").max() - pl.col("reward").min()).over("group_id"),
    )
    rule = pl.lit(None, pl.String)
    if config.drop_uniform_groups:
        rule = pl.when(pl.col("spread") <= config.uniform_tolerance).then(pl.lit("uniform_rewards")).otherwise(rule)
    if config.keep_mean_between is not None:
        lo, hi = config.keep_mean_between
        outside = (pl.col("group_mean") < lo) | (pl.col("group_mean") > hi)
        rule = pl.when(rule.is_null() & outside).then(pl.lit("mean_out_of_range")).otherwise(rule)
    ok = ok.with_columns(group_rule=rule)
    groups = ok.group_by("group_id").agg(pl.col("group_rule").first())
    group_counts = dict(groups.drop_nulls("group_rule")["group_rule"].value_counts().iter_rows())
    kept = ok.filter(pl.col("group_rule").is_null())
    kept = kept.select("row", "group_id", "reward", "group_mean", "group_std", "group_size")
    return kept, groups.height, group_counts

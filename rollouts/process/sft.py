"""SFT selection: rows that pass the row rules, de-duplicated, best-of-n per prompt.

Rules run in this order and a dropped row is counted under the first rule that drops it: failed, no final assistant turn
(trainers need the conversation to end with one: NeMo RL asserts it, TRL refuses an empty completion), length-truncated
(unless kept), below --min-reward, over --max-turns, over --max-output-tokens, duplicate completion of the same prompt
(the best-rewarded copy stays), outside the top --per-prompt of its prompt. Ranking within a prompt: reward descending,
then rollout index, then input order.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
from polars.expr.whenthen import ChainedThen, Then

from .card import DataCard, distribution, drops_from_counts, per_bucket
from .config import ProcessConfig

COLUMNS = [
    "row",
    "group_id",
    "status",
    "final_turn",
    "reward",
    "finish_reason",
    "num_turns",
    "output_tokens",
    "completion_key",
    "rollout_index",
]
FINAL_TURNS = ["assistant", "tool_call"]
RULES = {
    "failed": "the rollout failed (no reward)",
    "no_final_assistant": "the output does not end with an assistant message or tool call "
    "(only reasoning, empty, or a tool result / user turn last)",
    "length_truncated": "finish reason `length`: the completion was cut off (--keep-length-truncated keeps it)",
    "below_min_reward": "reward below --min-reward",
    "too_many_turns": "more model turns than --max-turns",
    "too_many_output_tokens": "more output tokens than --max-output-tokens",
    "duplicate": "same completion as a better-ranked rollout of the same prompt",
    "not_best_of_n": "outside the top --per-prompt rollouts of its prompt",
}


def row_rules(config: ProcessConfig, *, sft: bool) -> pl.Expr:
    """The first row rule that drops each row (null: kept), shared with DPO's candidate rules."""
    rule: Then | ChainedThen = pl.when(pl.col("status") != "ok").then(pl.lit("failed"))
    rule = rule.when(~pl.col("final_turn").is_in(FINAL_TURNS)).then(pl.lit("no_final_assistant"))
    if not config.keep_length_truncated:
        rule = rule.when(pl.col("finish_reason") == "length").then(pl.lit("length_truncated"))
    if sft and config.min_reward is not None:
        rule = rule.when(pl.col("reward") < config.min_reward).then(pl.lit("below_min_reward"))
    if sft and config.max_turns is not None:
        rule = rule.when(pl.col("num_turns") > config.max_turns).then(pl.lit("too_many_turns"))
    if sft and config.max_output_tokens is not None:
        rule = rule.when(pl.col("output_tokens") > config.max_output_tokens).then(pl.lit("too_many_output_tokens"))
    return rule.otherwise(pl.lit(None, pl.String))


def ranked(df: pl.DataFrame) -> pl.DataFrame:
    """Rows ordered best first within each prompt (`prompt_group`), with `rank` (1 = best)."""
    df = df.sort(
        ["group_id", "prompt_group", "reward", "rollout_index", "row"],
        descending=[False, False, True, False, False],
        nulls_last=True,
    )
    return df.with_columns(rank=pl.int_range(1, pl.len() + 1).over("prompt_group").cast(pl.Int32))


def mark_duplicates(df: pl.DataFrame, rule: str = "rule") -> pl.DataFrame:
    """On ranked rows: a kept row whose completion already appeared better-ranked for its prompt is a duplicate."""
    live = df.filter(pl.col(rule).is_null())
    dup = live.filter(~pl.col("completion_key").is_first_distinct().over("prompt_group"))["row"]
    return df.with_columns(
        pl.when(pl.col("row").is_in(dup.implode())).then(pl.lit("duplicate")).otherwise(pl.col(rule)).alias(rule)
    )


def judged(
    frame: pl.LazyFrame, columns: list[str], config: ProcessConfig, card: DataCard, *, sft: bool
) -> pl.DataFrame:
    """The rows with their row-rule verdict (`rule`, null = kept), ranked in their group, duplicates marked; the
    card's input figures filled. Shared by SFT and DPO, whose candidates pass the same row rules."""
    # a prompt is a task's group, or one of its prompts when a stateful environment gave its rollouts different ones
    df = (
        frame.select(*columns, "prompt_key")
        .collect()
        .with_columns(
            rule=row_rules(config, sft=sft),
            prompt_group=pl.format("{}\x1f{}", pl.col("group_id"), pl.col("prompt_key").fill_null(0)),
        )
    )
    card.rows_in = df.height
    card.groups_in = df["group_id"].n_unique()
    card.reward_before = distribution(df.filter(pl.col("status") == "ok")["reward"])
    df = ranked(df)
    return mark_duplicates(df) if config.drop_duplicates else df


def select_sft(frame: pl.LazyFrame, config: ProcessConfig, card: DataCard) -> pl.DataFrame:
    """Kept rows: row, group_id, reward, rank (1 = best of its prompt). Every rule looks at one group at most, so a
    big input is selected a bucket of whole groups at a time (`group_buckets`): the same rows as all at once."""
    counts: Counter[str] = Counter()
    found, per_prompt = [], []
    for bucket, part in per_bucket(frame, card):
        kept, bucket_counts, bucket_per_prompt = _select_bucket(bucket, config, part)
        counts.update(bucket_counts)
        found.append(kept)
        per_prompt.append(bucket_per_prompt)
    kept = pl.concat(found)
    if len(found) > 1:
        kept = kept.sort("row")
    card.dropped = drops_from_counts(counts, RULES)
    card.rows_out = kept.height
    card.groups_out = kept["group_id"].n_unique()
    card.reward_after = distribution(kept["reward"])
    card.distributions["rollouts_per_prompt"] = distribution(pl.concat(per_prompt))
    return kept


def _select_bucket(
    frame: pl.LazyFrame, config: ProcessConfig, card: DataCard
) -> tuple[pl.DataFrame, dict[str, int], pl.Series]:
    """Kept rows of these groups (by row), what each rule dropped, and how many rows each prompt kept."""
    df = judged(frame, COLUMNS, config, card, sft=True)
    live = df.filter(pl.col("rule").is_null())
    live = live.with_columns(rank=pl.int_range(1, pl.len() + 1).over("prompt_group").cast(pl.Int32))
    cut = live.filter(pl.col("rank") > config.per_prompt)["row"]
    df = df.with_columns(
        pl.when(pl.col("row").is_in(cut.implode()))
        .then(pl.lit("not_best_of_n"))
        .otherwise(pl.col("rule"))
        .alias("rule")
    )
    counts = dict(df.drop_nulls("rule")["rule"].value_counts().iter_rows())
    kept = live.filter(pl.col("rank") <= config.per_prompt).select("row", "group_id", "reward", "rank").sort("row")
    per_prompt = live.filter(pl.col("rank") <= config.per_prompt).group_by("prompt_group").agg(pl.len())["len"]
    return kept, counts, per_prompt

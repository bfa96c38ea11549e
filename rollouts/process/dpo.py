"""DPO selection: preference pairs built inside a group (one prompt) only.

Candidates are successful rollouts that end with an assistant turn, minus length-truncated ones (unless kept) and
duplicate completions. Both sides of a pair had the same prompt and tools: in stateful environments the rollouts of
one task index can have different prompts, and such rollouts are paired only within each prompt (cross-prompt pairs
are counted as `different_prompts`), unless `pair_by_task_index` asks to pair the whole task regardless. A pair's
chosen reward is always strictly higher than its rejected reward (a tie is never a pair) and the margin is at least
--min-margin. Strategies:
- best-worst: one pair per prompt, the largest-margin pair that passes the filters; without --max-length-ratio that
  is exactly the best and the worst rollout (among equal rewards, the lowest rollout index on either side).
- all-pairs: every pair that passes the filters.
- top-bottom-k: pairs of one of the k best with one of the k worst rollouts.
Pairs are ordered by margin (then chosen rank, rejected rank); --max-pairs-per-prompt keeps the first ones.
Length balancing: with --max-length-ratio R a pair whose longer side is more than R times the shorter is dropped
(output tokens when both sides have them, else characters of text, tool arguments and tool outputs).
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from .card import DataCard, distribution, drops_from_counts, per_bucket
from .config import ProcessConfig
from .sft import judged

COLUMNS = [
    "row",
    "group_id",
    "status",
    "final_turn",
    "reward",
    "finish_reason",
    "completion_key",
    "rollout_index",
    "output_tokens",
    "output_chars",
]
MAX_JOIN_ROWS = 8_000_000  # candidate pairs materialised at once; bigger inputs are joined in batches of groups
ROW_RULES = {
    "failed": "the rollout failed (no reward)",
    "no_final_assistant": "the output does not end with an assistant message or tool call",
    "length_truncated": "finish reason `length` (--keep-length-truncated keeps it)",
    "duplicate": "same completion as a better-ranked rollout of the same prompt",
}
GROUP_RULES = {
    "fewer_than_2_candidates": "fewer than two candidate rollouts",
    "all_rewards_tied": "all candidates have the same reward: a tie is never a pair",
    "margin_below_min": "no two candidates differ by --min-margin",
    "no_pair_passes_filters": "every pair with enough margin fails --max-length-ratio, has identical completions "
    "or different prompts",
}
PAIR_RULES = {
    "different_prompts": "the two rollouts had different prompts (a stateful environment): not a preference pair",
    "tie": "equal rewards (counted once per unordered pair)",
    "margin_below_min": "reward margin below --min-margin",
    "identical_completions": "chosen and rejected completions are identical",
    "length_ratio": "longer side more than --max-length-ratio times the shorter",
    "not_selected": "not the pair the strategy picks",
    "over_cap": "beyond --max-pairs-per-prompt",
}
PAIR_COLUMNS = ["group_id", "chosen_row", "rejected_row", "chosen_reward", "rejected_reward", "margin", "pair_rank"]


def select_dpo(frame: pl.LazyFrame, config: ProcessConfig, card: DataCard) -> pl.DataFrame:
    """Pairs: group_id, chosen_row, rejected_row, chosen_reward, rejected_reward, margin, pair_rank (1 = first).

    Pairs never cross a task, so the tasks are paired a bucket of them at a time (`group_buckets`), each bucket's
    pairs in the same order as all at once; the pairs are then ordered across buckets by their prompt's first row."""
    card.unit = "pairs"
    row_counts: Counter[str] = Counter()
    group_counts: Counter[str] = Counter()
    pair_counts: dict[str, int] = {}
    found = []
    for bucket, part in per_bucket(frame, card):
        df = judged(bucket, COLUMNS, config, part, sft=False)
        row_counts.update(dict(df.drop_nulls("rule")["rule"].value_counts().iter_rows()))
        cands, pairs = _bucket_pairs(df.filter(pl.col("rule").is_null()).drop("rule"), config, pair_counts)
        group_counts.update(_group_reasons(cands, pairs, part.groups_in, config))
        found.append(pairs)
    pairs = pl.concat(found)
    if len(found) > 1:
        pairs = pairs.sort("group_order", "pair_rank")
    pairs = pairs.select(PAIR_COLUMNS)
    card.dropped = drops_from_counts(row_counts, ROW_RULES)
    card.pair_drops = drops_from_counts(pair_counts, PAIR_RULES)
    card.group_drops = drops_from_counts(group_counts, GROUP_RULES)
    _fill_card(card, pairs, config)
    return pairs


def _bucket_pairs(
    cands: pl.DataFrame, config: ProcessConfig, pair_counts: dict[str, int]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The candidates of some whole tasks (group_id = their task) and their pairs in order, with `group_order`."""
    cands = _pairing_groups(cands, config.pair_by_task_index, pair_counts)
    cands = cands.with_columns(
        rank=pl.int_range(1, pl.len() + 1).over("group_id").cast(pl.Int32),
        group_order=pl.col("row").min().over("group_id"),
    )
    # worst first: lowest reward, ties broken by rollout index like the best side
    low = cands.sort(["group_id", "reward", "rollout_index", "row"], nulls_last=True)
    low = low.select("row", rank_low=pl.int_range(1, pl.len() + 1).over("group_id").cast(pl.Int32))
    cands = cands.join(low, on="row", maintain_order="left")
    pairs = _pairs(cands, config, pair_counts)
    pairs = pairs.sort(["group_order", "margin", "rank", "rank_rej"], descending=[False, True, False, False])
    pairs = pairs.with_columns(pair_rank=pl.int_range(1, pl.len() + 1).over("group_id").cast(pl.Int32))
    if config.max_pairs_per_prompt is not None:
        over = int((pairs["pair_rank"] > config.max_pairs_per_prompt).sum())
        pair_counts["over_cap"] = pair_counts.get("over_cap", 0) + over
        pairs = pairs.filter(pl.col("pair_rank") <= config.max_pairs_per_prompt)
    pairs = pairs.rename(
        {"row": "chosen_row", "row_rej": "rejected_row", "reward": "chosen_reward", "reward_rej": "rejected_reward"}
    )
    tasks = cands.select(chosen_row="row", task_group="task_group")
    pairs = pairs.join(tasks, on="chosen_row", maintain_order="left").with_columns(group_id=pl.col("task_group"))
    return cands.with_columns(group_id=pl.col("task_group")), pairs.select(*PAIR_COLUMNS, "group_order")


def _pairing_groups(cands: pl.DataFrame, by_task: bool, counts: dict[str, int]) -> pl.DataFrame:
    """`group_id` becomes the pairing group (task and prompt, or the task with `by_task`); `task_group` keeps the
    task."""
    cands = cands.with_columns(task_group=pl.col("group_id"))
    if by_task:
        return cands
    per_task = cands.group_by("task_group").agg(n=pl.len())
    per_prompt = cands.group_by("task_group", "prompt_key").agg(n=pl.len())

    def pairs(n: pl.Expr) -> pl.Expr:
        return n * (n - 1) // 2

    cross = int(per_task.select(pairs(pl.col("n")).sum()).item() or 0) - int(
        per_prompt.select(pairs(pl.col("n")).sum()).item() or 0
    )
    if cross:
        counts["different_prompts"] = cross
    return cands.with_columns(group_id=pl.format("{}\x1f{}", pl.col("task_group"), pl.col("prompt_key").fill_null(0)))


def _pairs(cands: pl.DataFrame, config: ProcessConfig, counts: dict[str, int]) -> pl.DataFrame:
    if config.pairing == "best-worst" and config.max_length_ratio is None:
        best = cands.filter(pl.col("rank") == 1)
        worst = cands.filter(pl.col("rank_low") == 1).select(
            "group_id", pl.exclude("group_id", "group_order").name.suffix("_rej")
        )
        pairs = best.join(worst, on="group_id").with_columns(margin=pl.col("reward") - pl.col("reward_rej"))
        return _drop_identical(pairs.filter((pl.col("margin") > 0) & (pl.col("margin") >= config.min_margin)), counts)
    left, right = cands, cands
    if config.pairing == "top-bottom-k":
        left = cands.filter(pl.col("rank") <= config.top_k)
        right = cands.filter(pl.col("rank_low") <= config.top_k)
    sizes = left.group_by("group_id").agg(n=pl.len()).join(right.group_by("group_id").agg(m=pl.len()), on="group_id")
    sizes = sizes.sort("group_id").with_columns(batch=((pl.col("n") * pl.col("m")).cum_sum() // MAX_JOIN_ROWS))
    batches = []
    for _, ids in sizes.group_by("batch", maintain_order=True):
        keep = pl.col("group_id").is_in(ids["group_id"].implode())
        batches.append(_pair_batch(left.filter(keep), right.filter(keep), config, counts))
    out = pl.concat(batches) if batches else _pair_batch(left.clear(), right.clear(), config, counts)
    if config.pairing == "best-worst":
        before = out.height
        out = out.sort(["margin", "rank", "rank_rej"], descending=[True, False, False]).unique("group_id", keep="first")
        counts["not_selected"] = counts.get("not_selected", 0) + before - out.height
    return out


def _pair_batch(left: pl.DataFrame, right: pl.DataFrame, config: ProcessConfig, counts: dict[str, int]) -> pl.DataFrame:
    right = right.select("group_id", pl.exclude("group_id", "group_order").name.suffix("_rej"))
    joined = left.join(right, on="group_id").filter(pl.col("row") != pl.col("row_rej"))
    joined = joined.with_columns(margin=pl.col("reward") - pl.col("reward_rej"))
    ties = joined.filter(pl.col("margin") == 0).select(
        a=pl.min_horizontal("row", "row_rej"), b=pl.max_horizontal("row", "row_rej")
    )
    counts["tie"] = counts.get("tie", 0) + ties.unique().height  # once per unordered pair
    pairs = joined.filter(pl.col("margin") > 0)
    low = pairs.filter(pl.col("margin") < config.min_margin).height
    counts["margin_below_min"] = counts.get("margin_below_min", 0) + low
    pairs = pairs.filter(pl.col("margin") >= config.min_margin)
    pairs = _drop_identical(pairs, counts)
    if config.max_length_ratio is not None:
        pairs = pairs.with_columns(length_ratio=_length_ratio())
        counts["length_ratio"] = counts.get("length_ratio", 0) + int(
            (pairs["length_ratio"] > config.max_length_ratio).sum()
        )
        pairs = pairs.filter(pl.col("length_ratio") <= config.max_length_ratio).drop("length_ratio")
    return pairs


def _drop_identical(pairs: pl.DataFrame, counts: dict[str, int]) -> pl.DataFrame:
    """chosen == rejected text teaches nothing (only possible when duplicates are kept)."""
    same = pl.col("completion_key") == pl.col("completion_key_rej")
    n = int(pairs.select(same.sum()).item())
    if n:
        counts["identical_completions"] = counts.get("identical_completions", 0) + n
    return pairs.filter(~same)


def _length_ratio() -> pl.Expr:
    both_tokens = pl.col("output_tokens").is_not_null() & pl.col("output_tokens_rej").is_not_null()
    a = pl.when(both_tokens).then(pl.col("output_tokens")).otherwise(pl.col("output_chars")).cast(pl.Float64)
    b = pl.when(both_tokens).then(pl.col("output_tokens_rej")).otherwise(pl.col("output_chars_rej")).cast(pl.Float64)
    return pl.max_horizontal(a, b) / pl.max_horizontal(pl.min_horizontal(a, b), pl.lit(1.0))


def _group_reasons(cands: pl.DataFrame, pairs: pl.DataFrame, groups_in: int, config: ProcessConfig) -> dict[str, int]:
    """Why each of these `groups_in` tasks gave no pair (counts by GROUP_RULES reason)."""
    stats = cands.group_by("group_id").agg(n=pl.len(), spread=pl.col("reward").max() - pl.col("reward").min())
    with_pairs = pairs["group_id"].unique().implode()
    reason = (
        pl.when(pl.col("group_id").is_in(with_pairs))
        .then(pl.lit(None, pl.String))
        .when(pl.col("n") < 2)
        .then(pl.lit("fewer_than_2_candidates"))
        .when(pl.col("spread") == 0)
        .then(pl.lit("all_rewards_tied"))
        .when(pl.col("spread") < config.min_margin)
        .then(pl.lit("margin_below_min"))
        .otherwise(pl.lit("no_pair_passes_filters"))
    )
    stats = stats.with_columns(reason=reason)
    no_candidates = groups_in - stats.height
    group_counts = dict(stats.drop_nulls("reason")["reason"].value_counts().iter_rows())
    group_counts["fewer_than_2_candidates"] = group_counts.get("fewer_than_2_candidates", 0) + no_candidates
    return group_counts


def _fill_card(card: DataCard, pairs: pl.DataFrame, config: ProcessConfig) -> None:
    card.rows_out = pairs.height
    card.groups_out = pairs["group_id"].n_unique()
    card.reward_after = distribution(pl.concat([pairs["chosen_reward"], pairs["rejected_reward"]]))
    card.distributions["chosen_reward"] = distribution(pairs["chosen_reward"])
    card.distributions["rejected_reward"] = distribution(pairs["rejected_reward"])
    card.distributions["margin"] = distribution(pairs["margin"])
    card.distributions["pairs_per_prompt"] = distribution(pairs.group_by("group_id").agg(pl.len())["len"])
    card.notes.append(
        f"pairing {config.pairing}: {pairs.height} pairs from {card.groups_out} of {card.groups_in} prompts"
    )

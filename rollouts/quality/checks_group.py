"""Checks over a task's group of rollouts: identical completions, and tasks whose every rollout is unhealthy.

Both are `run` checks: they run once on the whole run, after every rollout check, on the columns kept from each chunk
(frame.KEPT_COLUMNS) plus `fired_<id>` of each rollout check that ran. A group is (source, task_index): rows without
a task index belong to no group and are unobserved by these checks. `task_rollup` lists the tasks whose every
rollout is unhealthy for the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from .config import QualityConfig
from .registry import quoted, register, result

GROUP = ["source", "task_index"]
FIRED_PREFIX = "fired_"


@register(
    "identical_group",
    needs=("source", "task_index", "completion_key", "completion_preview", "temperature"),
    scope="run",
)
def identical_group(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """Every completion of a task's group is identical (all model items' text and tool calls), so the group gives
    no signal for RL advantages or DPO pairs. Groups smaller than `group_min_size` and groups sampled at temperature
    0 (where identical completions are expected) are unobserved."""
    size = pl.len().over(GROUP)
    greedy = (pl.col("temperature") == 0).fill_null(False).all().over(GROUP)
    observed = pl.col("task_index").is_not_null() & (size >= config.group_min_size) & ~greedy
    fired = pl.when(observed).then(pl.col("completion_key").n_unique().over(GROUP) == 1)
    rows = frame.select("task_index", "completion_preview", size=size, fired=fired)
    # The evidence of the rows that fired only (quoting every row's preview cost more than the check).
    hit = rows["fired"].fill_null(False)
    quotes = rows.filter(hit).select(
        pl.format(
            "all {} completions of task {} are identical: {}",
            pl.col("size"),
            pl.col("task_index"),
            quoted(pl.col("completion_preview"), config.evidence_chars),
        )
    )
    evidence = pl.Series("evidence", [None] * rows.height, dtype=pl.String).scatter(hit.arg_true(), quotes.to_series())
    return rows.select("fired", evidence=evidence)


@register("task_always_unhealthy", needs=("source", "task_index"), scope="run")
def task_always_unhealthy(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """Every rollout of a task is unhealthy by the rollout checks (at least `task_min_rollouts` of them), so the
    prompt or its environment is likely broken rather than the model unlucky."""
    fired_columns = [name for name in frame.columns if name.startswith(FIRED_PREFIX)]
    if not fired_columns:
        return frame.select(fired=pl.lit(None, pl.Boolean), evidence=pl.lit(None, pl.String))
    # Per task first (one row per group), then back onto the rollouts: the evidence is built once per task
    # whose every rollout is unhealthy, not once per rollout.
    counts = {name: pl.col(name).fill_null(False).sum() for name in fired_columns}
    tasks = (
        frame.filter(pl.col("task_index").is_not_null())
        .group_by(GROUP)
        .agg(
            size=pl.len(),
            all_bad=pl.any_horizontal([pl.col(name).fill_null(False) for name in fired_columns]).all(),
            **counts,
        )
    )
    which = pl.concat_list(
        [
            pl.when(pl.col(name) > 0).then(pl.format("{} ×{}", pl.lit(name[len(FIRED_PREFIX) :]), pl.col(name)))
            for name in fired_columns
        ]
    )
    size = pl.col("size")
    tasks = tasks.select(
        *GROUP,
        task_fired=pl.when(size >= config.task_min_rollouts).then(pl.col("all_bad")),
        task_evidence=pl.when(pl.col("all_bad") & (size >= config.task_min_rollouts)).then(
            pl.format(
                "{}/{} rollouts of task {} unhealthy: {}",
                size,
                size,
                pl.col("task_index"),
                which.list.drop_nulls().list.join(", "),
            )
        ),
    )
    rows = frame.select(GROUP).join(tasks, on=GROUP, how="left", maintain_order="left")
    return result(rows, pl.col("task_fired"), pl.col("task_evidence"))


def task_rollup(table: pl.DataFrame, check_ids: Sequence[str], limit: int) -> dict[str, Any]:
    """The tasks of a checked run: how many, how many have every rollout unhealthy, and the first `limit` of those
    with how often each check fired in them (summary.json's `tasks`)."""
    always = f"{FIRED_PREFIX}task_always_unhealthy"
    grouped = table.filter(pl.col("task_index").is_not_null())
    if grouped.height == 0:
        return {"tasks": 0, "judged": 0, "always_unhealthy": 0, "always_unhealthy_tasks": []}
    counts = {c: pl.col(f"{FIRED_PREFIX}{c}").fill_null(False).sum() for c in check_ids if c != "task_always_unhealthy"}
    if always not in grouped.columns:  # the check did not run: no task is judged
        grouped = grouped.with_columns(pl.lit(None, pl.Boolean).alias(always))
    flag = pl.col(always)
    per_task = (
        grouped.group_by(GROUP)
        .agg(rollouts=pl.len(), judged=flag.is_not_null().any(), always=flag.fill_null(False).any(), **counts)
        .sort(GROUP)
    )
    broken = per_task.filter(pl.col("always"))
    examples = [
        {
            "source": item["source"],
            "_ng_task_index": item["task_index"],
            "rollouts": item["rollouts"],
            "checks": {c: item[c] for c in counts if item[c]},
        }
        for item in broken.head(limit).iter_rows(named=True)
    ]
    return {
        "tasks": per_task.height,
        "judged": int(per_task["judged"].sum()),
        "always_unhealthy": broken.height,
        "always_unhealthy_tasks": examples,
    }

"""Thin Prefect tasks, one per stage of the collection DAG: each wraps `rollouts.<stage>` on one shard (or the run).

tasks/shard.py    -> rollouts/stages/shard.py      tasks/profile.py -> rollouts/report/metrics.py
tasks/generate.py -> rollouts/stages/generate.py   tasks/filter.py  -> rollouts/stages/filter.py
tasks/verify.py   -> rollouts/stages/verify.py     tasks/format.py  -> rollouts/stages/format.py
"""

from collections.abc import Callable
from typing import Any, TypedDict

from prefect import Task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.client.schemas.objects import State, TaskRun

from rollouts.collector.runtime import collector


def _not_stopped(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A shard stopped by Ctrl-C is not retried: the next run of the command resumes it."""
    return not collector().stop.is_set()


class StageTaskOptions(TypedDict):
    """`@task` options of every stage (typed, so the decorator keeps the task's signature)."""

    cache_policy: CachePolicy
    persist_result: bool


class ShardTaskOptions(StageTaskOptions):
    """`@task` options of the per-shard stages."""

    retries: int
    retry_delay_seconds: int
    retry_condition_fn: Callable[[Task[..., Any], TaskRun, State[Any]], bool]


# Every stage is idempotent on its own output (it skips what is done), so nothing relies on Prefect's result cache.
STAGE_TASK: StageTaskOptions = {"cache_policy": NO_CACHE, "persist_result": False}
# Shard tasks may retry once: the model client owns request-level retries, so this only covers shard-level faults
# such as a storage hiccup, and never multiplies request retries.
SHARD_TASK: ShardTaskOptions = {
    "retries": 1,
    "retry_delay_seconds": 5,
    "retry_condition_fn": _not_stopped,
    **STAGE_TASK,
}

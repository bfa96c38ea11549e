"""Prefect tasks of the collection flow: each wraps one stage of the core on one shard (or the whole run)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from rollouts import collect as core
from rollouts import report as reporting
from rollouts.collect import RunRef, ShardRef, ShardResult
from rollouts.config import CollectConfig
from rollouts.loop import run_on_collector_loop
from rollouts.profile import ProfileOptions
from rollouts.run import RunPlan, plan_run

# Shard tasks are idempotent on their own output (they skip finished rollouts), so a Prefect retry is safe; the model
# client owns request-level retries, so these only cover shard-level faults such as a storage hiccup.
SHARD_TASK = dict(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)


@task(name="shard-prompts", cache_policy=NO_CACHE, persist_result=False)
def shard_prompts(config: CollectConfig) -> RunPlan:
    return plan_run(config)


@task(name="generate-shard", task_run_name="generate-{shard.shard}", **SHARD_TASK)
def generate_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # All shards' requests share one event loop per process (see rollouts/loop.py for the measurements).
    return run_on_collector_loop(core.generate_shard(run, shard.shard))


@task(name="verify-shard", task_run_name="verify-{shard.shard}", **SHARD_TASK)
def verify_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # On the same loop as generation, in cooperative slices: from its own thread it would hold the GIL in 5 ms
    # stretches while responses wait (p90 model latency 285 ms against a 200 ms server at --parallel 256).
    return run_on_collector_loop(core.verify_shard(run, shard.shard))


@task(name="profile-run", cache_policy=NO_CACHE, persist_result=False)
def profile_run(run: RunRef) -> dict:
    result = reporting.profile_run(core.run_store(run), ProfileOptions.from_config(run.config))
    for artifact in result.artifacts:  # the run report first: it is the one to open
        if artifact.kind == "table":
            create_table_artifact(key=artifact.key, table=artifact.table, description=artifact.description)
        else:
            create_markdown_artifact(key=artifact.key, markdown=artifact.markdown, description=artifact.description)
    return result.profile

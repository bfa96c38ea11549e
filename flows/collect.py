"""The `collect-rollouts` flow: shard prompts -> generate -> verify -> profile -> filter -> format."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from rollouts.config import CollectConfig
from rollouts.errors import RunFailedError
from rollouts.outcome import RunSummary, finish_run
from rollouts.progress import count_shard
from tasks.collect import generate_shard, profile_run, shard_prompts, verify_shard
from tasks.train import filter_rollouts, format_training_data


@contextlib.contextmanager
def shard_runners(config: CollectConfig) -> Iterator[tuple[TaskRunner, TaskRunner]]:
    """Task runners for the generate and verify stages.

    Threads: two pools of `--max-concurrent-shards` workers; a shard's verify task waits in its own pool for that
    shard's generation, so generation of the next shards goes on meanwhile. Dask: one runner for both (a verify task
    waits in Dask's graph without holding a worker thread), `--dask-workers` processes of that many threads each.
    """
    if config.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            runner = DaskTaskRunner(address=config.dask_address)
        else:
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": config.dask_workers, "processes": True,
                                                    "threads_per_worker": config.max_concurrent_shards,
                                                    "dashboard_address": None})
        with runner:
            yield runner, runner
        return
    width = config.max_concurrent_shards
    with ThreadPoolTaskRunner(max_workers=width) as generators, ThreadPoolTaskRunner(max_workers=width) as verifiers:
        yield generators, verifiers


@flow(name="collect-rollouts", log_prints=False, validate_parameters=True)
def collect_rollouts(config: CollectConfig) -> RunSummary:
    """Collect `num_repeats` verified rollouts per prompt and write training files for each objective."""
    logger = get_run_logger()
    plan = shard_prompts(config)
    run = plan.run
    logger.info("run %s: %d prompts in %d shards, %d rejected rows%s", run.run_url, plan.prompts, len(plan.shards),
                plan.rejects, " (resuming)" if plan.resumed else "")
    progress = create_progress_artifact(progress=0.0, description=f"Shards verified for {run.run_url}")
    with shard_runners(config) as (generators, verifiers):
        generated = generators.map(generate_shard, {"run": unmapped(run), "shard": plan.shards})
        verified = [verifiers.submit(verify_shard, {"run": run, "shard": shard}, wait_for=[future])
                    for shard, future in zip(plan.shards, generated, strict=True)]
        for done, future in enumerate(verified, start=1):  # shards finish roughly in submission order
            future.wait()
            update_progress_artifact(progress, progress=100.0 * done / len(verified))
            if config.processes > 1 and future.state.is_completed():  # workers' counters live in their processes
                count_shard(future.result())
        shard_states = [future.state for future in verified]
    results = [state.result() for state in shard_states if state.is_completed()]
    broken = [shard.shard for shard, state in zip(plan.shards, shard_states, strict=True) if not state.is_completed()]
    profile = profile_run(run)
    outputs = {selection.objective: format_training_data(run, selection) for selection in filter_rollouts(run)}
    summary = finish_run(plan, results, broken, profile, outputs)
    if summary.status == "failed":
        raise RunFailedError(summary.reason, summary=summary.model_dump())
    return summary

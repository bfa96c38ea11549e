"""The `collect-rollouts` flow: shard prompts -> generate -> verify -> profile -> filter -> format."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from rollouts.config import CollectConfig
from rollouts.errors import RunFailedError
from rollouts.outcome import RunSummary, finish_run
from tasks.collect import generate_shard, profile_run, shard_prompts, verify_shard
from tasks.train import filter_rollouts, format_training_data


@flow(name="collect-rollouts", log_prints=False, validate_parameters=True)
def collect_rollouts(config: CollectConfig) -> RunSummary:
    """Collect `num_repeats` verified rollouts per prompt and write training files for each objective."""
    logger = get_run_logger()
    plan = shard_prompts(config)
    run = plan.run
    logger.info("run %s: %d prompts in %d shards, %d rejected rows%s", run.run_url, plan.prompts, len(plan.shards),
                plan.rejects, " (resuming)" if plan.resumed else "")
    progress = create_progress_artifact(progress=0.0, description=f"Shards verified for {run.run_url}")
    # Two pools of the same size: a shard's verify task waits in its own pool for that shard's generation, so
    # generation of the next shards goes on meanwhile and `--max-concurrent-shards` bounds each stage.
    width = config.max_concurrent_shards
    with ThreadPoolTaskRunner(max_workers=width) as generators, ThreadPoolTaskRunner(max_workers=width) as verifiers:
        generated = generators.map(generate_shard, {"run": unmapped(run), "shard": plan.shards})
        verified = [verifiers.submit(verify_shard, {"run": run, "shard": shard}, wait_for=[future])
                    for shard, future in zip(plan.shards, generated, strict=True)]
        for done, future in enumerate(verified, start=1):  # shards finish roughly in submission order
            future.wait()
            update_progress_artifact(progress, progress=100.0 * done / len(verified))
        shard_states = [future.state for future in verified]
    results = [state.result() for state in shard_states if state.is_completed()]
    broken = [shard.shard for shard, state in zip(plan.shards, shard_states, strict=True) if not state.is_completed()]
    profile = profile_run(run)
    outputs = {selection.objective: format_training_data(run, selection) for selection in filter_rollouts(run)}
    summary = finish_run(plan, results, broken, profile, outputs)
    if summary.status == "failed":
        raise RunFailedError(summary.reason, summary=summary.model_dump())
    return summary

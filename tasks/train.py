"""Prefect tasks of the filter and format stages: shape a run's rollouts into training files for each objective."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from rollouts.collect import RunRef, run_store
from rollouts.process.api import Selection, load_rollouts, select, write_outputs
from rollouts.storage import join

STAGE_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="filter-rollouts", **STAGE_TASK)
def filter_rollouts(run: RunRef) -> list[Selection]:
    """Load the run's rollouts once, then apply each objective's rules; selections are Parquet files in the run."""
    options = run.config.storage_options
    store = run_store(run)
    store.remove("train", ".work")  # an earlier attempt's intermediate frame: rebuilt from the rollouts
    workdir = join(run.run_url, "train", ".work")
    configs = run.config.process_configs()
    skip_bad_rows = any(config.skip_bad_rows for config in configs)
    loaded = load_rollouts([run.run_url], storage_options=options, workdir=workdir, skip_bad_rows=skip_bad_rows)
    return [select(loaded, config, workdir=workdir, storage_options=options) for config in configs]


@task(name="format-training-data", task_run_name="format-{selection.objective}", **STAGE_TASK)
def format_training_data(run: RunRef, selection: Selection) -> list[str]:
    config = next(c for c in run.config.process_configs() if c.objective == selection.objective)
    result = write_outputs(selection, config, join(run.run_url, "train"), storage_options=run.config.storage_options)
    create_markdown_artifact(key=f"data-card-{selection.objective}", markdown=result.card.to_markdown(),
                             description=f"{selection.objective} data card of {run.run_url}")
    return [*result.files.values(), result.card_markdown]

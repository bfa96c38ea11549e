"""The `collect-rollouts` flow of deployments: CollectConfig's sections as parameters (`collect_from_sections`).

A run started from the UI, the CLI or a trigger gives only what it changes; each section it gives is merged field by
field onto the deployment's parameters. The collection itself is `flows.collection.collect`. This module is imported
only where a deployment needs it (`flows/collect.py:collect_from_sections`, the deployments' entrypoint, resolves
to it), so a `rollouts collect` run does not build this flow's parameter schema.
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the real annotations,
# and string annotations are left "not fully defined" in a worker process that runs a deployment.
from typing import Any
from uuid import UUID

from prefect import flow, get_client
from prefect.client.schemas.objects import State
from prefect.runtime import deployment

from flows.collection import collect, run_name_of, scheduled_time
from rollouts.config import (
    BatchConfig,
    ConcurrencyConfig,
    EndpointConfig,
    EnvironmentConfig,
    Objective,
    ProfilingConfig,
    RowsConfig,
    SamplingConfig,
    StorageConfig,
    TrainConfig,
    dated_input,
    merged_config,
)
from rollouts.quality.config import QualityConfig
from rollouts.stages.outcome import RunSummary

# The sections a run did not give: empty instances (no field set), so only what a run gives is merged.
NO_ENDPOINT = EndpointConfig.model_construct()
NO_SAMPLING = SamplingConfig.model_construct()
NO_ROWS = RowsConfig.model_construct()
NO_CONCURRENCY = ConcurrencyConfig.model_construct()
NO_ENVIRONMENTS = EnvironmentConfig.model_construct()
NO_STORAGE = StorageConfig.model_construct()
NO_PROFILING = ProfilingConfig.model_construct()
NO_BATCH = BatchConfig.model_construct()
NO_TRAIN = TrainConfig.model_construct()
NO_QUALITY = QualityConfig.model_construct()


def deployment_defaults() -> dict[str, Any] | None:
    """The parameters of the deployment this flow run belongs to, if any (`prefect.runtime.deployment.parameters`
    are the run's own, already replaced section by section by what the run gave)."""
    if not deployment.id:
        return None
    with get_client(sync_client=True) as client:
        return client.read_deployment(UUID(deployment.id)).parameters


@flow(name="collect-rollouts", flow_run_name=run_name_of, log_prints=False, validate_parameters=False)
def collect_from_sections(
    input: str,
    objective: list[Objective] = ["rl"],  # noqa: B006  (a parameter default, never mutated)
    run_name: str = "",
    max_failure_fraction: float = 0.05,
    endpoint: EndpointConfig = NO_ENDPOINT,
    sampling: SamplingConfig = NO_SAMPLING,
    rows: RowsConfig = NO_ROWS,
    concurrency: ConcurrencyConfig = NO_CONCURRENCY,
    environments: EnvironmentConfig = NO_ENVIRONMENTS,
    storage: StorageConfig = NO_STORAGE,
    profiling: ProfilingConfig = NO_PROFILING,
    batch: BatchConfig = NO_BATCH,
    train: TrainConfig = NO_TRAIN,
    quality: QualityConfig = NO_QUALITY,
) -> RunSummary | State[Any]:
    """The same collection with CollectConfig's sections as parameters, for deployments: a run started from the UI,
    the CLI or a trigger gives only what it changes, merged field by field onto the deployment's parameters.

    Args:
        input: prompts JSONL (NeMo Gym rows, {"prompt": ...} or {"messages": [...]}): local path or fsspec URL;
            `{date}` in it is the day the run was scheduled for (YYYY-MM-DD, UTC)
        objective: training files to write (rl, sft, dpo); the first sets the sampling defaults
        run_name: name of the run directory; empty: input name + digest of config and input
        max_failure_fraction: the run fails when more rollouts than this fraction fail
        endpoint: the model server (or a ModelEndpoint block) and how requests to it are made
        sampling: sampling options; empty fields: the rows' own values, then the objective's preset
        rows: which input rows are used
        concurrency: how much runs at once, and where
        environments: what a prompt is solved in: its tools and its verifier
        storage: where runs are written (or a RolloutStorage block)
        profiling: what the run's profile measures beyond its always-on report
        batch: provider batch mode (the Batch API instead of live calls), its fallback and price
        train: filters and formats of the training files
        quality: thresholds of the rollout health checks, and --max-unhealthy-fraction
    """
    given = {k: v for k, v in locals().items() if v is not None and not (k == "run_name" and v == "")}
    given["input"] = dated_input(input, scheduled_time())  # `{date}`: the day the run was scheduled for
    return collect(merged_config(given, deployment_defaults()))

"""Task `check-health`: the rollout health checks of a run, published as artifacts: the per-check table, and the
report section (tables per check and environment, the worst rollouts with links to their rows)."""

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rollouts.run import RunRef
from rollouts.stages.health import Health, check_health
from tasks import STAGE_TASK
from tasks.artifacts import publish


@task(name="check-health", **STAGE_TASK)
def check_run_health(run: RunRef) -> Health:
    health = check_health(run)
    publish(
        create_table_artifact,
        key="rollout-health-checks",
        table=health.table,
        description=f"Rollout health checks of {run.run_url}",
    )
    publish(
        create_markdown_artifact,
        key="rollout-health",
        markdown=health.markdown,
        description=f"Rollout health of {run.run_url}",
    )
    return health

"""Task `check-health`: the rollout health checks of a run, with their report section as an artifact."""

from prefect import task
from prefect.artifacts import create_markdown_artifact

from rollouts.run import RunRef
from rollouts.stages.health import Health, check_health
from tasks import STAGE_TASK


@task(name="check-health", **STAGE_TASK)
def check_run_health(run: RunRef) -> Health:
    health = check_health(run)
    create_markdown_artifact(key="rollout-health", markdown=health.markdown, description="Rollout health checks")
    return health

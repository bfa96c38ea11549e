"""Task `filter-rollouts`: load the run's rollouts once and select each objective's rows or pairs."""

from prefect import task

from rollouts.run import RunRef
from rollouts.stages.filter import filter_run
from rollouts.training.api import Selection
from tasks import STAGE_TASK


@task(name="filter-rollouts", **STAGE_TASK)
def filter_rollouts(run: RunRef) -> list[Selection]:
    return filter_run(run)

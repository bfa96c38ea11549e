"""Task `format-training-data`: one objective's training files and its data card artifact."""

from prefect import task
from prefect.artifacts import create_markdown_artifact

from rollouts.run import RunRef
from rollouts.stages.format import format_run
from rollouts.training.api import Selection
from tasks import STAGE_TASK
from tasks.artifacts import publish


@task(name="format-training-data", task_run_name="format-{selection.objective}", **STAGE_TASK)
def format_training_data(run: RunRef, selection: Selection) -> list[str]:
    result = format_run(run, selection)
    publish(
        create_markdown_artifact,
        key=f"data-card-{selection.objective}",
        markdown=result.card.to_markdown(),
        description=f"{selection.objective} data card of {run.run_url}",
    )
    return [*result.files.values(), result.card_markdown]

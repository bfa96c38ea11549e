"""Task `profile-run`: the run's profile files, report and charts, published as artifacts (the run report first)."""

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rollouts.report.metrics import ProfileOptions
from rollouts.run import RunRef, run_store
from rollouts.stages import profile as reporting
from tasks import STAGE_TASK
from tasks.artifacts import publish


@task(name="profile-run", **STAGE_TASK)
def profile_run(run: RunRef) -> dict[str, Any]:
    result = reporting.profile_run(run_store(run), ProfileOptions.from_config(run.config))
    for artifact in result.artifacts:
        if artifact.kind == "table":
            publish(create_table_artifact, key=artifact.key, table=artifact.table, description=artifact.description)
        else:
            publish(
                create_markdown_artifact, key=artifact.key, markdown=artifact.markdown, description=artifact.description
            )
    return result.profile

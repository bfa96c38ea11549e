"""Task `profile-run`: the run's profile files, published as artifacts."""

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rollouts import profile as profiling
from rollouts.run import RunRef, run_store
from tasks import STAGE_TASK


@task(name="profile-run", **STAGE_TASK)
def profile_run(run: RunRef) -> dict:
    store = run_store(run)
    profile = profiling.profile_frame(profiling.read_run_frame(store))
    profiling.write_profile(store, profile)
    create_table_artifact(key="rollout-timings", table=profiling.timing_rows(profile),
                          description=f"Per-rollout timings (ms) of {run.run_url}")
    create_table_artifact(key="rollout-throughput", table=[{k: profile[k] for k in (
        "rollouts", "failed", "rollouts_per_s", "output_tokens_per_s", "generation_window_s")}],
        description="Throughput of the generation stage")
    if profile["failures_by_type"]:
        create_table_artifact(key="rollout-failures", table=profile["failures_by_type"], description="Failures by error type")
    create_markdown_artifact(key="reward-histogram", markdown=profiling.histogram_markdown(profile),
                             description="Reward histogram per environment")
    return profile

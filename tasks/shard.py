"""Task `shard-prompts`: find or create the run, cut its prompts into shards."""

from prefect import task

from rollouts.config import CollectConfig
from rollouts.run import RunPlan
from rollouts.runtime import collector
from rollouts.shard import plan_run
from tasks import STAGE_TASK


@task(name="shard-prompts", **STAGE_TASK)
def shard_prompts(config: CollectConfig) -> RunPlan:
    plan = plan_run(config)
    collector().board.add_total(plan.rollouts_expected)
    return plan

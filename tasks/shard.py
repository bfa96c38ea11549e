"""Task `shard-prompts`: find or create the run, cut its prompts into shards."""

from prefect import task

from blocks import endpoint_auth
from rollouts.collector.runtime import collector
from rollouts.config import CollectConfig
from rollouts.run import RunPlan
from rollouts.stages.shard import plan_run
from tasks import STAGE_TASK


@task(name="shard-prompts", **STAGE_TASK)
def shard_prompts(config: CollectConfig) -> RunPlan:
    board = collector().board
    board.set_phase("reading prompts")
    auth = endpoint_auth(config.endpoint.block, config.api_key())
    plan = plan_run(config, auth=auth, locks=collector().locks)  # the flow releases the run's lock when it ends
    board.add_total(plan.rollouts_expected)
    board.set_phase("collecting")
    return plan

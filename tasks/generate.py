"""Task `generate-shard`: generate one shard's missing rollouts where the run's engine puts it."""

from prefect import task

from blocks import endpoint_auth
from rollouts.collector.engine import Engine, engine_for
from rollouts.collector.runtime import collector
from rollouts.config import CollectConfig
from rollouts.run import RunRef, ShardRef, ShardResult
from rollouts.stages.generate import finish_generation, generate_with
from tasks import SHARD_TASK


def engine_of(config: CollectConfig) -> Engine:
    """The run's engine, starting shards with the generate stage (see rollouts/collector/engine.py)."""
    return engine_for(config.concurrency, generate_with)


@task(name="generate-shard", task_run_name="generate-{shard.shard}", **SHARD_TASK)
def generate_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # All shards' requests share one event loop per process (see rollouts/collector/runtime.py for the measurements).
    # The key is loaded here, in a task, never passed as a task argument (a collector process gets it by pipe).
    auth = endpoint_auth(run.config.endpoint.block, run.config.api_key())
    return engine_of(run.config).hand_out(collector(), run, shard.shard, auth)


def finish_parallel(run: RunRef) -> None:
    """After the shards: stop this process's `--parallel auto` controller and write its trace for the timeline."""
    finish_generation(collector(), run)

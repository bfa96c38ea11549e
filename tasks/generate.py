"""Task `generate-shard`: generate one shard's missing rollouts on the process's collector loop."""

from prefect import task

from blocks import endpoint_auth

from rollouts import generate
from rollouts.run import RunRef, ShardRef, ShardResult
from rollouts.runtime import collector
from tasks import SHARD_TASK


@task(name="generate-shard", task_run_name="generate-{shard.shard}", **SHARD_TASK)
def generate_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # All shards' requests share one event loop per process (see rollouts/runtime.py for the measurements).
    runtime = collector()
    # The key is loaded here, in the process that sends the requests: it never travels in a task argument.
    auth = endpoint_auth(run.config.endpoint.block, run.config.api_key())
    limiter = runtime.limiter(run.run_id, run.config.parallel_per_process)
    return runtime.run(generate.generate_shard(run, shard.shard, clients=runtime.clients, limiter=limiter,
                                               board=runtime.board, breaker=runtime.breaker(run.run_id),
                                               auth=auth, stop=runtime.stop))

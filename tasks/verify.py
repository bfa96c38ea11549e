"""Task `verify-shard`: score one shard's generated rollouts."""

from prefect import task

from rollouts.collector.runtime import collector
from rollouts.run import RunRef, ShardRef, ShardResult
from rollouts.stages import verify
from tasks import SHARD_TASK


@task(name="verify-shard", task_run_name="verify-{shard.shard}", **SHARD_TASK)
def verify_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # On the same loop as generation, in cooperative slices: from its own thread it would hold the GIL in 5 ms
    # stretches while responses wait (p90 model latency 285 ms against a 200 ms server at --parallel 256).
    runtime = collector()
    return runtime.run(verify.verify_shard(run, shard.shard, board=runtime.board, stop=runtime.stop))

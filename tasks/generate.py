"""Task `generate-shard`: generate one shard's missing rollouts on the process's collector loop."""

from prefect import task

from blocks import endpoint_auth

from rollouts import generate
from rollouts.parallelism import ParallelControl
from rollouts.run import RunRef, ShardRef, ShardResult, run_store
from rollouts.runtime import collector
from tasks import SHARD_TASK


@task(name="generate-shard", task_run_name="generate-{shard.shard}", **SHARD_TASK)
def generate_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # All shards' requests share one event loop per process (see rollouts/runtime.py for the measurements).
    runtime = collector()
    # The key is loaded here, in the process that sends the requests: it never travels in a task argument.
    auth = endpoint_auth(run.config.endpoint.block, run.config.api_key())
    limiter = runtime.limiter(run.run_id, run.config.parallel_per_process)
    control = None
    if run.config.concurrency.parallel == "auto":
        control = runtime.parallel_control(run.run_id, lambda: parallel_control(run, auth))
    return runtime.run(generate.generate_shard(run, shard.shard, clients=runtime.clients, limiter=limiter,
                                               board=runtime.board, breaker=runtime.breaker(run.run_id),
                                               auth=auth, stop=runtime.stop, control=control))


def parallel_control(run: RunRef, auth) -> ParallelControl:
    c = run.config.concurrency
    return ParallelControl("auto", model_url=run.config.endpoint.model_url, request_timeout=run.config.endpoint.request_timeout,
                           api_key=auth.api_key, headers=auth.headers, min_parallel=c.min_parallel,
                           max_parallel=c.max_parallel)


def finish_parallel(run: RunRef) -> None:
    """After the shards: stop this process's `--parallel auto` controller and write its trace for the timeline."""
    runtime = collector()
    control = runtime.pop_parallel_control(run.run_id)
    if control is not None:
        runtime.run(control.stop(run_store(run)))

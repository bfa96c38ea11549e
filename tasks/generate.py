"""Task `generate-shard`: generate one shard's missing rollouts on the process's collector loop."""

import concurrent.futures

from prefect import task

from blocks import endpoint_auth

from rollouts.stages import generate
from rollouts.tune.control import ParallelControl
from rollouts.run import RunRef, ShardRef, ShardResult, run_store
from rollouts.collector.runtime import collector
from tasks import SHARD_TASK


@task(name="generate-shard", task_run_name="generate-{shard.shard}", **SHARD_TASK)
def generate_shard(run: RunRef, shard: ShardRef) -> ShardResult:
    # All shards' requests share one event loop per process (see rollouts/collector/runtime.py for the measurements).
    runtime = collector()
    # The key is loaded here, in a task, never passed as a task argument (a collector process gets it by pipe).
    auth = endpoint_auth(run.config.endpoint.block, run.config.api_key())
    if run.config.concurrency.task_runner == "processes":
        return in_collector_process(run, shard, auth)
    limiter = runtime.limiter(run.run_id, run.config.parallel_per_process)
    control = None
    if run.config.concurrency.parallel == "auto":
        control = runtime.parallel_control(run.run_id, lambda: parallel_control(run, auth))
    return runtime.run(generate.generate_shard(run, shard.shard, clients=runtime.clients, limiter=limiter,
                                               board=runtime.board, breaker=runtime.breaker(run.run_id),
                                               auth=auth, stop=runtime.stop, control=control))


def in_collector_process(run: RunRef, shard: ShardRef, auth) -> ShardResult:
    """`--task-runner processes`: the shard runs in one of this machine's collector processes (rollouts.collector.pool);
    this task waits for it, and relays a stop request (Ctrl-C) to the processes."""
    runtime = collector()
    pool = runtime.pool(run.config.concurrency.worker_processes)
    future = pool.submit(run, shard.shard, auth)
    while True:
        try:
            return future.result(timeout=0.2)
        except concurrent.futures.TimeoutError:
            if runtime.stop.is_set():
                pool.stop(runtime.stop.reason)


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

"""Engines: how the shards of a run are handed out (threads, collector processes, Dask, Ray) and where counts live.

The flow and the generate task ask the run's engine instead of branching on `--task-runner`:
  threads    a shard runs on this process's one collector loop (rollouts/collector/runtime.py)
  processes  a shard goes to the least busy of this machine's collector processes (rollouts/collector/pool.py);
             the task waits for it and relays a stop request
  dask, ray  a shard runs on the collector loop of the worker process its task landed in; the workers' counts
             live there, so the flow adds each finished shard's result to its own progress board
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import ClassVar

from rollouts.client.credentials import EndpointAuth
from rollouts.collector.pool import CollectorPool, ShardStart
from rollouts.collector.runtime import CollectorRuntime
from rollouts.config import ConcurrencyConfig
from rollouts.run import RunRef, ShardResult


class Engine:
    """Threads: every shard on this process's collector loop; `--max-concurrent-shards` shard tasks at a time.

    `start(runtime, run, shard, auth)` makes a shard's coroutine on the runtime that runs it: the generate stage's
    `generate_with`, handed in so the collector never imports the stages (a module-level function: a collector
    process gets it pickled by name)."""

    name: str = "threads"
    # Whether the counts of a shard's rollouts live in other processes' boards that the flow never sees live.
    counts_in_workers: ClassVar[bool] = False
    live_counts: bool = True  # the board moves as rollouts finish (else: as each shard's result comes back)

    def __init__(self, concurrency: ConcurrencyConfig, start: ShardStart) -> None:
        self.concurrency, self.start = concurrency, start

    @property
    def shard_slots(self) -> int:
        """Shard tasks of one stage that may run at once in the flow's task runner."""
        return self.concurrency.max_concurrent_shards

    def prepare(self, runtime: CollectorRuntime) -> None:
        """Before the run's shards: nothing to start on threads."""

    def hand_out(self, runtime: CollectorRuntime, run: RunRef, shard: str, auth: EndpointAuth) -> ShardResult:
        """Generate one shard and wait for its result."""
        return runtime.run(self.start(runtime, run, shard, auth))


class ProcessEngine(Engine):
    """`--task-runner processes`: shard tasks on threads hand their shard to this machine's collector processes."""

    name = "processes"

    @property
    def shard_slots(self) -> int:
        return self.concurrency.max_concurrent_shards * self.concurrency.worker_processes

    def pool(self, runtime: CollectorRuntime) -> CollectorPool:
        """This machine's collector processes, started on first use and kept for later runs of the same size."""
        return runtime.pool(
            self.concurrency.worker_processes, lambda workers, board: CollectorPool(workers, board, self.start)
        )

    def prepare(self, runtime: CollectorRuntime) -> None:
        """The processes start while the prompts are read and sharded; a stop left by an earlier run is cleared."""
        self.pool(runtime).reset()

    def hand_out(self, runtime: CollectorRuntime, run: RunRef, shard: str, auth: EndpointAuth) -> ShardResult:
        pool = self.pool(runtime)
        future = pool.submit(run, shard, auth)
        while True:
            try:
                return future.result(timeout=0.2)
            except concurrent.futures.TimeoutError:
                if runtime.stop.is_set():
                    pool.stop(runtime.stop.reason)


class DistributedEngine(Engine):
    """Dask or Ray: a shard task runs in a worker process, on that process's own collector loop."""

    counts_in_workers = True

    def __init__(self, concurrency: ConcurrencyConfig, start: ShardStart) -> None:
        super().__init__(concurrency, start)
        self.name = concurrency.task_runner


ENGINES: dict[str, Callable[[ConcurrencyConfig, ShardStart], Engine]] = {
    "threads": Engine,
    "processes": ProcessEngine,
    "dask": DistributedEngine,
    "ray": DistributedEngine,
}


def engine_for(concurrency: ConcurrencyConfig, start: ShardStart) -> Engine:
    """The engine of a run's `--task-runner`."""
    return ENGINES[concurrency.task_runner](concurrency, start)

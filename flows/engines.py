"""Task runners for the distributed engines (Dask, Ray), and the API server their worker processes report to.

Worker processes must reach the flow's own Prefect API. Without `PREFECT_API_URL` the flow talks to the embedded
server, a subprocess on a loopback port of this machine; a worker that inherits nothing starts an embedded server
of its own, and under load that fails (`AssertionError('Server process did not start')`), losing the shard. So
local workers are handed the URL of the server this process uses, and remote clusters must be given a real one.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from prefect.settings import PREFECT_API_URL
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from rollouts.collector.channel import ProgressListener
from rollouts.collector.engine import Engine
from rollouts.collector.runtime import collector
from rollouts.config import ConcurrencyConfig
from rollouts.errors import ConfigError

# A task runner of any engine: the type of its futures differs (concurrent, Dask, Ray).
AnyRunner = TaskRunner[Any]


def worker_api_url() -> str | None:
    """The API server this process reports to: `PREFECT_API_URL`, or the running embedded server's URL."""
    url: str | None = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    return server.api_url if server is not None and server.running else None


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for worker processes: the API server to use, this process's quiet, offline defaults, `extra`."""
    env = extra | {
        key: os.environ[key]
        for key in (
            "PREFECT_SERVER_ANALYTICS_ENABLED",
            "DO_NOT_TRACK",
            "PREFECT_LOGGING_LEVEL",
            "PREFECT_API_KEY",
            "PYTHONPATH",
        )
        if os.environ.get(key)
    }
    url = worker_api_url()
    if url:
        env["PREFECT_API_URL"] = url
    return env


def _remote_needs_real_server(engine: str) -> None:
    url = worker_api_url()
    if not PREFECT_API_URL.value() and url:
        raise ConfigError(
            f"--{engine}-address: the workers of a remote cluster cannot reach this process's embedded "
            f"Prefect server ({url}); start one (`prefect server start`) and set PREFECT_API_URL to an "
            "address the workers can reach"
        )


def dask_runner(
    address: str | None, workers: int, threads_per_worker: int, env: dict[str, str] | None = None
) -> AnyRunner:
    """An existing Dask scheduler, or a local cluster of `workers` processes on loopback with no dashboard port."""
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        _remote_needs_real_server("dask")
        return DaskTaskRunner(address=address)
    # dashboard_address=None still binds the scheduler's HTTP server on :8787; a random loopback port does not clash.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "processes": True,
            "threads_per_worker": threads_per_worker,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "scheduler_kwargs": {"dashboard": False},
            "env": worker_env(**(env or {})),
        }
    )


def ray_runner(address: str | None, workers: int, env: dict[str, str] | None = None) -> AnyRunner:
    """An existing Ray cluster (`ray://host:10001` or `auto`), or a local Ray instance of `workers` CPUs.

    A shard task takes one CPU, so each Ray worker process runs one shard at a time on its own collector loop with
    its share of `--parallel` (`CollectConfig.parallel_per_process`); verify tasks wait in Ray's graph, not on a CPU.
    """
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ConfigError("--task-runner ray needs prefect-ray: pip install 'rollouts[ray]'") from None

    if address:
        _remote_needs_real_server("ray")
        runner: AnyRunner = RayTaskRunner(address=address, init_kwargs={"runtime_env": {"env_vars": worker_env()}})
        return runner
    runtime_env: dict[str, Any] = {"env_vars": worker_env(**(env or {}))}
    runner = RayTaskRunner(
        init_kwargs={
            "num_cpus": workers,
            "include_dashboard": False,
            "log_to_driver": False,
            "runtime_env": runtime_env,
        }
    )
    return runner


def _distributed(concurrency: ConcurrencyConfig, env: dict[str, str]) -> AnyRunner:
    if concurrency.task_runner == "dask":
        return dask_runner(concurrency.dask_address, concurrency.dask_workers, concurrency.max_concurrent_shards, env)
    return ray_runner(concurrency.ray_address, concurrency.ray_workers, env)


# Batch mode: shards whose batches may be in flight at once (a shard waits on its batches, not on a connection).
BATCH_SHARDS_AT_ONCE = 256


def shard_width(engine: Engine, batch_shards: int = 0) -> int:
    """Shard tasks of one stage at once: the engine's slots, or with --batch every shard (`batch_shards`, up to
    BATCH_SHARDS_AT_ONCE), so all their batches wait at the provider together instead of in waves of
    --max-concurrent-shards, each a whole batch turnaround."""
    return max(engine.shard_slots, min(batch_shards, BATCH_SHARDS_AT_ONCE))


@contextlib.contextmanager
def shard_runners(engine: Engine, batch_shards: int = 0) -> Iterator[tuple[AnyRunner, AnyRunner]]:
    """Task runners for the generate and verify stages of an engine's run.

    Threads and processes: two thread pools of `shard_width` workers; a shard's verify task waits in its own pool
    for that shard's generation, so generation of the next shards goes on meanwhile (with processes, each generate
    task hands its shard to a collector process). Dask, Ray: one runner for both (a verify task waits in the
    runner's graph without holding a worker), one collector loop per worker process.
    """
    if engine.counts_in_workers:
        concurrency = engine.concurrency
        # Local workers report their counts live over a loopback channel; a remote cluster's, with each shard.
        local = not (concurrency.dask_address if concurrency.task_runner == "dask" else concurrency.ray_address)
        listener = ProgressListener(collector().board) if local else None
        engine.live_counts = listener is not None
        try:
            with _distributed(concurrency, listener.env() if listener else {}) as runner:
                yield runner, runner
        finally:
            if listener is not None:
                listener.close()
        return
    width = shard_width(engine, batch_shards)
    generators: ThreadPoolTaskRunner[Any]
    verifiers: ThreadPoolTaskRunner[Any]
    with ThreadPoolTaskRunner(max_workers=width) as generators, ThreadPoolTaskRunner(max_workers=width) as verifiers:
        yield generators, verifiers

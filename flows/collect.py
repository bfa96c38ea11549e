"""The `collect-rollouts` flow: shard prompts -> generate -> verify -> profile -> filter -> format."""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the real annotation,
# and a string annotation leaves it "not fully defined" in a worker process that runs a deployment.
import contextlib
from collections.abc import Iterator

from rollouts.collector.allocator import release_freed_memory_at_once

release_freed_memory_at_once()  # before anything imports polars: see rollouts/collector/allocator.py

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from blocks import apply_blocks
from flows.engines import dask_runner, ray_runner
from flows.events import emit_run_event
from rollouts.config import CollectConfig
from rollouts.errors import RunFailedError
from rollouts.stages.outcome import RunSummary, finish_run, judge
from rollouts.report.profiler import function_profile
from rollouts.redact import refuse_secrets
from rollouts.run import run_store
from rollouts.collector.runtime import collector
from tasks.filter import filter_rollouts
from tasks.format import format_training_data
from tasks.generate import finish_parallel, generate_shard
from tasks.profile import profile_run
from tasks.shard import shard_prompts
from tasks.verify import verify_shard


@contextlib.contextmanager
def shard_runners(config: CollectConfig) -> Iterator[tuple[TaskRunner, TaskRunner]]:
    """Task runners for the generate and verify stages.

    Threads: two pools of `--max-concurrent-shards` workers; a shard's verify task waits in its own pool for that
    shard's generation, so generation of the next shards goes on meanwhile. Processes: the same on threads, with
    `--max-concurrent-shards` per collector process, each generate task handing its shard to one of this machine's
    collector processes (rollouts.collector.pool), which runs it on its own loop. Dask, Ray: one runner for
    both (a verify task waits in the runner's graph without holding a worker), one collector loop per worker process.
    """
    c = config.concurrency
    if c.task_runner in ("dask", "ray"):
        runner = {"dask": lambda: dask_runner(c.dask_address, c.dask_workers, c.max_concurrent_shards),
                  "ray": lambda: ray_runner(c.ray_address, c.ray_workers)}[c.task_runner]()
        with runner:
            yield runner, runner
        return
    width = c.max_concurrent_shards * (c.worker_processes if c.task_runner == "processes" else 1)
    with ThreadPoolTaskRunner(max_workers=width) as generators, ThreadPoolTaskRunner(max_workers=width) as verifiers:
        yield generators, verifiers


def run_name_of() -> str:
    """Flow runs are named after the collection run (the CLI resolves its name before the flow starts)."""
    config = flow_run.parameters.get("config") or {}
    if not isinstance(config, dict):
        config = config.model_dump()
    name = config.get("run_name")
    stem = str(config.get("input", "prompts")).rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    return name or f"collect-{stem}"


def settled(future: PrefectFuture) -> bool:
    """Whether a shard's task has ended, asked of its runner's own future when it can say (threads, processes,
    Dask): `PrefectFuture.state` reads the task run from the API until then, four HTTP round trips a second of
    the flow's waiting loop, ~8 % of the collector's CPU at --parallel 256."""
    done = getattr(getattr(future, "wrapped_future", None), "done", None)
    return bool(done()) if callable(done) else future.state.is_final()


@flow(name="collect-rollouts", flow_run_name=run_name_of, log_prints=False, validate_parameters=True)
def collect_rollouts(config: CollectConfig) -> RunSummary:
    """Collect `num_repeats` verified rollouts per prompt and write training files for each objective."""
    logger = get_run_logger()
    board = collector().board
    board.set_ui_url(flow_run.ui_url)
    refuse_secrets(config)  # credentials in the parameters themselves: refused, and never written anywhere
    config = apply_blocks(config)  # block names travel in the parameters; their secrets are loaded here and in tasks
    if config.concurrency.task_runner == "processes":  # they start while the prompts are read and sharded
        collector().pool(config.concurrency.worker_processes).reset()
    plan = shard_prompts(config)
    run = plan.run
    logger.info("run %s: %d prompts in %d shards, %d rejected rows%s", run.run_url, plan.prompts, len(plan.shards),
                plan.rejects, " (resuming)" if plan.resumed else "")
    progress = create_progress_artifact(progress=0.0, description=f"Shards verified for {run.run_url}")
    stop = collector().stop
    profiling = config.profiling
    with function_profile(profiling.profile, run_store(run), duty=profiling.profile_duty), \
            shard_runners(config) as (generators, verifiers):
        generated = generators.map(generate_shard, {"run": unmapped(run), "shard": plan.shards})
        verified = [verifiers.submit(verify_shard, {"run": run, "shard": shard}, wait_for=[future])
                    for shard, future in zip(plan.shards, generated, strict=True)]
        for done, future in enumerate(verified, start=1):  # shards finish roughly in submission order
            while not stop.is_set() and not settled(future):
                future.wait(timeout=0.25)
            if stop.is_set():
                break
            future.wait()  # done: this keeps its result in memory (tasks do not persist results)
            update_progress_artifact(progress, progress=100.0 * done / len(verified))
            if config.concurrency.task_runner in ("dask", "ray") and future.state.is_completed():  # their workers' counters live there
                collector().board.add_shard(future.result())
        if stop.is_set():  # Ctrl-C: tasks not started yet are cancelled; those running stop after flushing
            for future in (*generated, *verified):
                cancel = getattr(future.wrapped_future, "cancel", None)  # thread/process pools; Dask/Ray run on
                if cancel is not None:
                    cancel()
            verified = [f for f in verified if not getattr(f.wrapped_future, "cancelled", lambda: False)()]
            for future in verified:
                future.wait()
        shard_states = [future.state for future in verified]
    results = [state.result() for state in shard_states if state.is_completed()]
    finish_parallel(run)
    if stop.is_set():
        summary = finish_run(plan, judge(plan, results, [], interrupted=stop.reason), results, [], {}, {})
        emit_run_event(summary)
        raise RunFailedError(summary.reason, summary=summary.model_dump())
    broken = [shard.shard for shard, state in zip(plan.shards, shard_states, strict=True) if not state.is_completed()]
    board.set_phase("profiling")
    profile = profile_run(run)
    verdict = judge(plan, results, broken)
    outputs: dict[str, list[str]] = {}
    if verdict.status == "completed":  # a failed run writes no training files: they would hold a partial run
        board.set_phase("writing training files")
        outputs = {selection.objective: format_training_data(run, selection) for selection in filter_rollouts(run)}
    summary = finish_run(plan, verdict, results, broken, profile, outputs)
    logger.info("run %s %s: %d of %d rollouts ok, mean reward %s", run.run_url, summary.status, summary.rollouts_ok,
                summary.rollouts_expected, summary.mean_reward)
    emit_run_event(summary)
    if summary.status != "completed":
        raise RunFailedError(summary.reason, summary=summary.model_dump())
    return summary

"""The `collect-rollouts` flow: shard prompts -> generate -> verify -> profile -> filter -> format."""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the real annotation,
# and a string annotation leaves it "not fully defined" in a worker process that runs a deployment.
from rollouts.collector.allocator import release_freed_memory_at_once

release_freed_memory_at_once()  # before anything imports polars: see rollouts/collector/allocator.py

import signal
from collections.abc import Sequence
from typing import Any, cast

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.runtime import flow_run

from blocks import apply_blocks
from flows.engines import shard_runners
from flows.events import emit_run_event
from rollouts.collector.engine import Engine
from rollouts.collector.interrupt import install_signal_handlers
from rollouts.collector.runtime import collector
from rollouts.config import CollectConfig
from rollouts.errors import RunFailedError
from rollouts.redact import refuse_secrets
from rollouts.report.profiler import function_profile
from rollouts.run import RunPlan, RunRef, run_store
from rollouts.stages.outcome import RunSummary, Verdict, finish_run, judge
from tasks.filter import filter_rollouts
from tasks.format import format_training_data
from tasks.generate import engine_of, finish_parallel, generate_shard
from tasks.profile import profile_run
from tasks.shard import shard_prompts
from tasks.verify import verify_shard


def run_name_of() -> str:
    """Flow runs are named after the collection run (the CLI resolves its name before the flow starts)."""
    config = flow_run.parameters.get("config") or {}
    if not isinstance(config, dict):
        config = config.model_dump()
    name = config.get("run_name")
    stem = str(config.get("input", "prompts")).rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    return name or f"collect-{stem}"


def _runner_future(future: PrefectFuture[Any]) -> Any:
    """The runner's own future inside a Prefect one: every runner here (threads, processes, Dask, Ray) returns a
    PrefectWrappedFuture, though TaskRunner.map is typed as returning plain PrefectFutures."""
    return cast(PrefectWrappedFuture[Any, Any], future).wrapped_future


def settled(future: PrefectFuture[Any]) -> bool:
    """Whether a shard's task has ended, asked of its runner's own future when it can say (threads, processes,
    Dask): `PrefectFuture.state` reads the task run from the API until then, four HTTP round trips a second of
    the flow's waiting loop, ~8 % of the collector's CPU at --parallel 256."""
    done = getattr(getattr(future, "wrapped_future", None), "done", None)
    return bool(done()) if callable(done) else future.state.is_final()


def follow_shards(
    engine: Engine,
    run: RunRef,
    generated: Sequence[PrefectFuture[Any]],
    verified: Sequence[PrefectFuture[Any]],
) -> list[State[Any]]:
    """Wait for the shards' verify tasks in submission order (roughly the order they finish), moving the progress
    artifact; on a stop request, cancel what has not started and wait for what runs to flush. Their final states."""
    stop = collector().stop
    progress = create_progress_artifact(progress=0.0, description=f"Shards verified for {run.run_url}")
    for done, future in enumerate(verified, start=1):
        while not stop.is_set() and not settled(future):
            future.wait(timeout=0.25)
        if stop.is_set():
            break
        future.wait()  # done: this keeps its result in memory (tasks do not persist results)
        # prefect's async_dispatch types the result as UUID | Coroutine; called from sync code it is the UUID
        update_progress_artifact(progress, progress=100.0 * done / len(verified))  # type: ignore[arg-type]
        if engine.counts_in_workers and future.state.is_completed():  # the workers' boards are not this one
            collector().board.add_shard(future.result())
    if stop.is_set():  # Ctrl-C: tasks not started yet are cancelled; those running stop after flushing
        for future in (*generated, *verified):
            cancel = getattr(_runner_future(future), "cancel", None)  # thread/process pools; Dask/Ray run on
            if cancel is not None:
                cancel()
        verified = [f for f in verified if not getattr(_runner_future(f), "cancelled", lambda: False)()]
        for future in verified:
            future.wait()
    return [future.state for future in verified]


def write_outputs(run: RunRef, verdict: Verdict) -> dict[str, list[str]]:
    """Training files of every objective; a failed run writes none: they would hold a partial run."""
    if verdict.status != "completed":
        return {}
    collector().board.set_phase("writing training files")
    return {selection.objective: format_training_data(run, selection) for selection in filter_rollouts(run)}


def conclude(summary: RunSummary) -> RunSummary:
    """Announce the run's end (log line, event); a run that did not complete ends the flow run Failed."""
    get_run_logger().info(
        "run %s %s: %d of %d rollouts ok, mean reward %s",
        summary.run_url,
        summary.status,
        summary.rollouts_ok,
        summary.rollouts_expected,
        summary.mean_reward,
    )
    emit_run_event(summary)
    if summary.status != "completed":
        raise RunFailedError(summary.reason, summary=summary.model_dump())
    return summary


@flow(name="collect-rollouts", flow_run_name=run_name_of, log_prints=False, validate_parameters=True)
def collect_rollouts(config: CollectConfig) -> RunSummary:
    """Collect `num_repeats` verified rollouts per prompt and write training files for each objective."""
    stop = collector().stop
    # Prefect's SIGTERM handler (installed around this body) would raise in this thread while the shards go on
    # collecting: ours stops taking work and flushes, like Ctrl-C; Prefect's comes back when the body ends.
    restore = install_signal_handlers(stop, signals=(signal.SIGTERM,))
    try:
        return collect(config)
    finally:
        restore()
        if stop.is_set():
            hand_back_cancellation()


def hand_back_cancellation() -> None:
    """A cancellation from the UI reaches a deployment's process as SIGTERM after the runner recorded its intent:
    once the stopped run is flushed and its manifest says `interrupted`, let Prefect's engine end the flow run
    Cancelled (it does so on `TerminationSignal` when that intent is set). A plain SIGTERM has no intent: the run
    ends Failed with the `interrupted` reason."""
    try:
        from prefect._internal.control_listener import get_intent
        from prefect.exceptions import TerminationSignal
    except ImportError:  # another Prefect release: the run ends Failed, which is still not Running
        return
    if get_intent() == "cancel":
        raise TerminationSignal(signal=signal.SIGTERM)


def collect(config: CollectConfig) -> RunSummary:
    board = collector().board
    board.set_ui_url(flow_run.ui_url)
    refuse_secrets(config)  # credentials in the parameters themselves: refused, and never written anywhere
    config = apply_blocks(config)  # block names travel in the parameters; their secrets are loaded here and in tasks
    engine = engine_of(config)
    engine.prepare(collector())  # collector processes start while the prompts are read and sharded
    plan = shard_prompts(config)  # takes the run's lock: held until this flow run ends, however it ends
    try:
        return collect_plan(config, engine, plan)
    finally:
        collector().locks.release(run_store(plan.run))


def collect_plan(config: CollectConfig, engine: Engine, plan: RunPlan) -> RunSummary:
    board, stop = collector().board, collector().stop
    run = plan.run
    get_run_logger().info(
        "run %s: %d prompts in %d shards, %d rejected rows%s",
        run.run_url,
        plan.prompts,
        len(plan.shards),
        plan.rejects,
        " (resuming)" if plan.resumed else "",
    )
    with (
        function_profile(config.profiling.profile, run_store(run), duty=config.profiling.profile_duty),
        shard_runners(engine) as (generators, verifiers),
    ):
        # TaskRunner.map lacks the overload for a sync task that submit and the concrete runners have (prefect)
        generated = generators.map(generate_shard, {"run": unmapped(run), "shard": plan.shards})  # type: ignore[arg-type]
        verified = [
            verifiers.submit(verify_shard, {"run": run, "shard": shard}, wait_for=[future])
            for shard, future in zip(plan.shards, generated, strict=True)
        ]
        states = follow_shards(engine, run, generated, verified)
    results = [state.result() for state in states if state.is_completed()]
    finish_parallel(run)
    if stop.is_set():
        return conclude(finish_run(plan, judge(plan, results, [], interrupted=stop.reason), results, [], {}, {}))
    broken = [shard.shard for shard, state in zip(plan.shards, states, strict=True) if not state.is_completed()]
    board.set_phase("profiling")
    profile = profile_run(run)
    verdict = judge(plan, results, broken)
    outputs = write_outputs(run, verdict)
    if stop.is_set():  # a stop during the last stages: the training files may be partial, so not `completed`
        verdict = judge(plan, results, broken, interrupted=stop.reason)
        return conclude(finish_run(plan, verdict, results, broken, profile, {}))
    return conclude(finish_run(plan, verdict, results, broken, profile, outputs))

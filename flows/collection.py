"""The collection that both `collect-rollouts` flows run: shard prompts -> generate -> verify -> profile -> filter ->
format. The flows: `flows/collect.py` (`collect_rollouts`, one CollectConfig: the command line's) and
`flows/sections.py` (`collect_from_sections`, the config's sections as parameters: the deployments')."""

from rollouts.allocator import release_freed_memory_at_once

release_freed_memory_at_once()  # before anything imports polars: see rollouts/allocator.py

import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from prefect import get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State
from prefect.context import TagsContext
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Cancelled

from blocks import apply_blocks
from flows.engines import shard_runners
from flows.events import emit_run_event
from rollouts.collector.engine import Engine
from rollouts.collector.interrupt import install_signal_handlers
from rollouts.collector.runtime import collector
from rollouts.config import CollectConfig, dated_input
from rollouts.errors import RunFailedError
from rollouts.options import build_models
from rollouts.quality import require_known_checks
from rollouts.redact import refuse_secrets
from rollouts.report.profiler import function_profile
from rollouts.run import RunPlan, RunRef, ShardResult, run_store, stored_results
from rollouts.stages.batched import record_batches
from rollouts.stages.outcome import RunSummary, Verdict, finish_run, judge, reward_text
from tasks.artifacts import Progress, flush_artifacts, sent_beside
from tasks.filter import filter_rollouts
from tasks.format import format_training_data
from tasks.generate import engine_of, finish_parallel, generate_shard
from tasks.health import check_run_health
from tasks.profile import profile_run
from tasks.shard import shard_prompts
from tasks.verify import verify_shard

# Before the flows that import this module: their parameter schemas serialize the sections' defaults.
build_models(CollectConfig)


def scheduled_time() -> datetime:
    """When this flow run was scheduled to start (now, for a run started by hand)."""
    return flow_run.scheduled_start_time or datetime.now(UTC)


def run_name_of() -> str:
    """Flow runs are named after the collection run (the CLI resolves its name before the flow starts)."""
    parameters = flow_run.parameters
    config = parameters.get("config") or parameters  # one CollectConfig, or its sections (collect_from_sections)
    if not isinstance(config, dict):
        config = config.model_dump()
    name = config.get("run_name")
    stem = (
        dated_input(str(config.get("input") or "prompts"), scheduled_time())
        .rstrip("/")
        .rsplit("/", 1)[-1]
        .split(".")[0]
    )
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


class ShardLog:
    """One INFO line per finished shard in the flow run's logs: rollouts done of the run's total, the rate since
    the shards started, and the mean reward so far."""

    def __init__(self, plan: RunPlan) -> None:
        self.total, self.shards = plan.rollouts_expected, len(plan.shards)
        self.done = self.ok = self.finished = 0
        self.reward_sum, self.started = 0.0, time.monotonic()

    def add(self, result: ShardResult) -> None:
        self.finished += 1
        self.done += result.rollouts + result.failed
        self.ok += result.rollouts
        self.reward_sum += result.reward_sum
        rate = self.done / max(time.monotonic() - self.started, 1e-3)
        get_run_logger().info(
            "shard %s done (%d of %d shards): %d/%d rollouts, %.1f rollouts/s, %s",
            result.shard,
            self.finished,
            self.shards,
            self.done,
            self.total,
            rate,
            reward_text(self.reward_sum / self.ok if self.ok else None),
        )


class BatchProgress:
    """Batch mode: a second progress artifact, the batches' requests answered of those sent, moved as they poll;
    and the manifest's `batches` (every batch's ids and status), copied from the shards' state files whenever a
    file or batch id appears or a batch ends."""

    def __init__(self, run: RunRef) -> None:
        self.run, self.run_url, self.shown = run, run.run_url, -1.0
        self.artifact: Progress | None = None
        self.recorded: tuple[int, int, int] | None = None  # the board's (requests, in flight, ids) when last copied

    def record(self) -> None:
        """Copy the batches' ids into the manifest (at the end of the shards, whatever the board says)."""
        record_batches(self.run)

    def update(self) -> None:
        snap = collector().board.snapshot()
        if not snap.batch_requests:
            return
        if (snap.batch_requests, snap.batch_running, snap.batch_ids) != self.recorded:
            self.recorded = (snap.batch_requests, snap.batch_running, snap.batch_ids)
            self.record()
        progress = round(100.0 * snap.batch_answered / snap.batch_requests, 1)
        if progress == self.shown:
            return
        if self.artifact is None:
            description = f"Batch requests answered for {self.run_url}"
            self.artifact = Progress(
                create_progress_artifact, update_progress_artifact, description=description, progress=progress
            )
        else:
            self.artifact.move(progress)
        self.shown = progress


def follow_shards(
    engine: Engine, plan: RunPlan, generated: Sequence[PrefectFuture[Any]], verified: Sequence[PrefectFuture[Any]]
) -> list[State[Any]]:
    """Wait for the shards' verify tasks in submission order (roughly the order they finish), moving the progress
    artifact and logging each shard; on a stop request, cancel what has not started and wait for what runs to
    flush. Their final states."""
    stop, shard_log = collector().stop, ShardLog(plan)
    description = f"Shards verified for {plan.run.run_url}"
    progress = Progress(create_progress_artifact, update_progress_artifact, description=description)
    batches = BatchProgress(plan.run) if plan.run.config.batch.enabled else None
    for done, future in enumerate(verified, start=1):
        while not stop.is_set() and not settled(future):
            future.wait(timeout=0.25)
            if batches is not None:
                batches.update()
        if stop.is_set():
            break
        future.wait()  # done: this keeps its result in memory (tasks do not persist results)
        progress.move(100.0 * done / len(verified))
        if batches is not None:
            batches.update()
        if future.state.is_completed():
            shard_log.add(future.result())
            if not engine.live_counts:  # a remote cluster's workers: their counts come with each shard
                collector().board.add_shard(future.result())
    if stop.is_set():  # Ctrl-C: tasks not started yet are cancelled; those running stop after flushing
        for future in (*generated, *verified):
            cancel = getattr(_runner_future(future), "cancel", None)  # thread/process pools; Dask/Ray run on
            if cancel is not None:
                cancel()
        verified = [f for f in verified if not getattr(_runner_future(f), "cancelled", lambda: False)()]
        for future in verified:
            future.wait()
    if batches is not None:
        batches.record()
    return [future.state for future in verified]


def write_outputs(run: RunRef, verdict: Verdict) -> dict[str, list[str]]:
    """Training files of every objective; a failed run writes none: they would hold a partial run."""
    if verdict.status != "completed":
        return {}
    collector().board.set_phase("writing training files")
    return {selection.objective: format_training_data(run, selection) for selection in filter_rollouts(run)}


def conclude(summary: RunSummary) -> RunSummary | State[Any]:
    """Announce the run's end (log lines with its counts and output places, event); a stopped run ends the flow
    run Cancelled, a run that did not complete ends it Failed."""
    logger = get_run_logger()
    logger.info(
        "run %s %s: %d of %d rollouts verified, %d failed, %s",
        summary.run_url,
        summary.status,
        summary.rollouts_ok,
        summary.rollouts_expected,
        summary.rollouts_failed,
        reward_text(summary.mean_reward),
    )
    for objective, files in summary.outputs.items():
        logger.info("%s training files: %s", objective, ", ".join(files))
    flush_artifacts()  # the run's artifacts exist (or it fails) before its end is announced
    emit_run_event(summary)
    if summary.status == "interrupted":
        return Cancelled(message=summary.reason, data=summary)
    if summary.status != "completed":
        raise RunFailedError(summary.reason, summary=summary.model_dump())
    return summary


def collect(config: CollectConfig) -> RunSummary | State[Any]:
    """The collection itself, in the flow run of either flow.

    Its stage tasks take no tags from around the flow call: the tags label the flow run (the CLI tags it with its
    process, see commands/stale_runs.py), and Prefect takes a concurrency slot through the API for every tag of
    every task run (two round trips and a lease thread each, ~0.1 s per stage task on an idle machine)."""
    stop = collector().stop
    # Prefect's SIGTERM handler (installed around a flow body) would raise in this thread while the shards go on
    # collecting: ours stops taking work and flushes, like Ctrl-C; Prefect's comes back when the body ends.
    restore = install_signal_handlers(stop, signals=(signal.SIGTERM,))
    try:
        with TagsContext(current_tags=set()), sent_beside():  # the run's artifacts are all created when it ends
            return collect_config(config)
    finally:
        restore()
        if stop.is_set():
            hand_back_cancellation()


def hand_back_cancellation() -> None:
    """A cancellation from the UI reaches a deployment's process as SIGTERM after the runner recorded its intent:
    once the stopped run is flushed and its manifest says `interrupted`, let Prefect's engine end the flow run
    Cancelled (it does so on `TerminationSignal` when that intent is set)."""
    try:
        from prefect._internal.control_listener import get_intent
        from prefect.exceptions import TerminationSignal
    except ImportError:  # another Prefect release: the run ends as `conclude` says, which is still not Running
        return
    if get_intent() == "cancel":
        raise TerminationSignal(signal=signal.SIGTERM)


def collect_config(config: CollectConfig) -> RunSummary | State[Any]:
    board = collector().board
    board.set_ui_url(flow_run.ui_url if PREFECT_UI_URL.value() else None)  # no UI with the embedded server
    refuse_secrets(config)  # credentials in the parameters themselves: refused, and never written anywhere
    require_known_checks(config.quality, config.train.drop_unhealthy)  # before anything is collected
    config = apply_blocks(config)  # block names travel in the parameters; their secrets are loaded here and in tasks
    engine = engine_of(config)
    engine.prepare(collector())  # collector processes start while the prompts are read and sharded
    plan = shard_prompts(config)  # takes the run's lock: held until this flow run ends, however it ends
    try:
        return collect_plan(config, engine, plan)
    finally:
        collector().locks.release(run_store(plan.run))


def collect_plan(config: CollectConfig, engine: Engine, plan: RunPlan) -> RunSummary | State[Any]:
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
        shard_runners(engine, len(plan.shards) if config.batch.enabled else 0) as (generators, verifiers),
    ):
        # TaskRunner.map lacks the overload for a sync task that submit and the concrete runners have (prefect)
        generated = generators.map(generate_shard, {"run": unmapped(run), "shard": plan.shards})  # type: ignore[arg-type]
        verified = [
            verifiers.submit(verify_shard, {"run": run, "shard": shard}, wait_for=[future])
            for shard, future in zip(plan.shards, generated, strict=True)
        ]
        states = follow_shards(engine, plan, generated, verified)
    results = [state.result() for state in states if state.is_completed()]
    finish_parallel(run)
    if stop.is_set():  # what the shards flushed, read back: a stopped shard task returns no counts
        results = stored_results(plan)
        return conclude(finish_run(plan, judge(plan, results, [], interrupted=stop.reason), results, [], {}, {}))
    broken = [shard.shard for shard, state in zip(plan.shards, states, strict=True) if not state.is_completed()]
    board.set_phase("checking rollout health")
    health = check_run_health(run)
    board.set_phase("profiling")
    profile = profile_run(run)
    verdict = judge(plan, results, broken)
    if verdict.status == "completed" and health.too_unhealthy:  # no training files from a run that fails it
        verdict = verdict.model_copy(update={"status": "failed", "reason": health.too_unhealthy})
    outputs = write_outputs(run, verdict)
    if stop.is_set():  # a stop during the last stages: the training files may be partial, so not `completed`
        results = stored_results(plan)
        verdict = judge(plan, results, broken, interrupted=stop.reason)
        return conclude(finish_run(plan, verdict, results, broken, profile, {}))
    return conclude(finish_run(plan, verdict, results, broken, profile, outputs))

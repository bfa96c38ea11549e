"""Batch mode of the generate stage: a shard's model calls go through the provider's Batch API, one round per turn.

Each rollout runs the same agent loop as a live one; only its model call differs. The call puts the request body
(exactly the live body) in the shard's current turn and waits. When every unfinished rollout of the shard waits on
the model, the turn's requests go out as batches (`rollouts.batch.BatchRunner`: split by the provider's limits,
uploaded, created, polled, collected, what is missing sent again); each reply is read by the model client as a live
reply would be, and the rollouts go on: tools run locally, and those that need another call wait in the next turn.
A single-turn shard is one turn.

What a turn has, under the run folder, so a killed command resumes it without a second batch for the same requests:

    batches/<shard>/turn-<k>.json            BatchState: custom_ids, file and batch ids, status and timeline per batch
    batches/<shard>/turn-<k>.results.jsonl   replies and final failures handed over, by custom_id

A resumed shard replays its rollouts: a call whose reply is stored gets it at once, a call held by a batch in flight
waits for that batch, the rest go into new batches. The custom_id is the rollout id; a rollout sent again by a later
command after a failure gets `<rollout id>-<attempts so far>`, so its new requests never meet the old results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from rollouts.batch import (
    CHAT,
    RESPONSES,
    BatchAPI,
    BatchAPIError,
    BatchJob,
    BatchLimits,
    BatchRunner,
    BatchState,
    JobResults,
)
from rollouts.batch.results import RequestFailure
from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import ModelCall, ModelClient
from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.config import BatchConfig, CollectConfig
from rollouts.errors import ProviderError
from rollouts.records import dumps, loads
from rollouts.redact import header_secrets, option_secrets
from rollouts.run import RunRef, run_store, write_manifest
from rollouts.storage import Appender, Store

FOLDER = "batches"
_ID_FIELDS = ("input_file_id", "batch_id", "output_file_id", "error_file_id")  # as the manifest lists them
LIVE_LOG = "live.jsonl"  # the live fallback's calls: their tokens are charged at the list price


def custom_id_of(rollout: str, prior_attempts: int) -> str:
    """The custom_id of a rollout's requests: its id, plus the attempts before this command when it is sent again."""
    return rollout if prior_attempts == 0 else f"{rollout}-{prior_attempts}"


@dataclass(slots=True)
class _Waiter:
    body: dict[str, Any]
    future: asyncio.Future[tuple[dict[str, Any] | RequestFailure, int]]


@dataclass(slots=True)
class _Shown:
    """What this shard last added to the progress board's batch counts (the board takes changes)."""

    requests: int = 0
    answered: int = 0
    running: int = 0
    ids: int = 0  # file and batch ids known (input, batch, output, error)


class ShardBatches:
    """The batch rounds of one shard's rollouts: `call` is a rollout's model call; `drive` sends the turns."""

    def __init__(
        self,
        store: Store,
        shard: str,
        config: BatchConfig,
        client: ModelClient,
        api: BatchAPI,
        board: ProgressBoard,
        limiter: InflightLimiter,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.store, self.shard, self.config = store, shard, config
        self.client, self.board, self.limiter = client, board, limiter
        self.endpoint = CHAT if client.api == "chat" else RESPONSES
        # With the live fallback, what a batch misses goes live at once instead of into another batch.
        rounds = 1 if config.fallback == "live" else config.rounds
        self.runner = BatchRunner(
            api,
            limits=BatchLimits(config.max_requests, config.max_bytes),
            poll_interval_s=config.poll_interval,
            max_rounds=rounds,
            metadata=metadata,
        )
        self.remaining = 0  # rollouts of the shard not finished yet
        self.waiting: dict[int, dict[str, _Waiter]] = {}  # turn -> custom_id -> its call
        self._changed = asyncio.Event()
        self._shown = _Shown()
        self._base = _Shown()  # counts of the turns done
        self._live_log: Appender | None = None

    # ----- the rollouts' side ---------------------------------------------------------------------------------------

    def expect(self, rollouts: int) -> None:
        self.remaining = rollouts

    def finished(self) -> None:
        """A rollout ended (however): the turn may be complete without it."""
        self.remaining -= 1
        self._changed.set()

    async def call(
        self,
        custom_id: str,
        turn: int,
        items: list[dict[str, Any]],
        params: dict[str, Any],
        sampling: dict[str, Any],
    ) -> ModelCall:
        """One model call of a rollout, answered by the batch of its turn (or live, with --batch-fallback live)."""
        body = self.client.request_body(items, params, sampling)
        future: asyncio.Future[tuple[dict[str, Any] | RequestFailure, int]] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(turn, {})[custom_id] = _Waiter(body, future)
        self._changed.set()
        started = time.perf_counter()
        answer, attempts = await future
        if isinstance(answer, RequestFailure):
            if answer.retryable and self.config.fallback == "live":
                return await self._live(custom_id, turn, items, params, sampling)
            record = answer.as_record()
            raise ProviderError(
                record["message"], status_code=answer.status_code, retryable=answer.retryable, attempts=attempts
            )
        call = self.client.parse_reply(answer)
        call.attempts = attempts
        call.latency_ms = (time.perf_counter() - started) * 1000
        return call

    async def _live(
        self, custom_id: str, turn: int, items: list[dict[str, Any]], params: dict[str, Any], sampling: dict[str, Any]
    ) -> ModelCall:
        """A live call instead of a batch request (--batch-fallback live); its tokens are logged for the report,
        which charges them at the list price."""
        await self.limiter.acquire()
        try:
            call = await self.client.create(items, params, sampling)
        finally:
            self.limiter.release()
        if self._live_log is None:
            self._live_log = self.store.appender(FOLDER, self.shard, LIVE_LOG)
        line = {"custom_id": custom_id, "turn": turn, "input": call.input_tokens, "output": call.output_tokens}
        self._live_log.write(dumps(line))
        return call

    # ----- the turns ------------------------------------------------------------------------------------------------

    async def drive(self) -> None:
        """Send turn after turn until every rollout of the shard has finished."""
        try:
            while True:
                while self.remaining != sum(len(calls) for calls in self.waiting.values()):
                    self._changed.clear()
                    await self._changed.wait()
                if self.remaining <= 0:
                    return
                turn = min(self.waiting)
                await self._run_turn(turn, self.waiting.pop(turn))
        finally:
            if self._live_log is not None:
                self._live_log.commit()

    def _path(self, turn: int, suffix: str) -> tuple[str, str, str]:
        return FOLDER, self.shard, f"turn-{turn}{suffix}"

    async def _run_turn(self, turn: int, calls: dict[str, _Waiter]) -> None:
        stored = self._stored_results(turn)
        for custom_id in [c for c in calls if c in stored]:
            self._resolve(calls.pop(custom_id), stored[custom_id])
        if not calls:
            return
        raw = self.store.read_json(*self._path(turn, ".json"))
        state = BatchState.model_validate(raw) if raw else BatchState.new(self.endpoint)
        results = self.store.appender(*self._path(turn, ".results.jsonl"))

        def save(state: BatchState) -> None:
            self.store.write_bytes(state.to_json().encode(), *self._path(turn, ".json"))
            self._show(state)

        def hand_over(job: BatchJob, outcome: JobResults) -> None:
            for custom_id, reply in outcome.replies.items():
                line = {"custom_id": custom_id, "reply": reply, "attempts": job.round + 1}
                results.write(dumps(line))
                if custom_id in calls:
                    self._resolve(calls.pop(custom_id), line)
            for custom_id, failure in outcome.failures.items():
                line = {"custom_id": custom_id, "failure": asdict(failure), "attempts": failure.attempts}
                results.write(dumps(line))
                if custom_id in calls:
                    self._resolve(calls.pop(custom_id), line)
            results.flush()  # durable before the runner marks the batch handed over

        try:
            await self.runner.run(
                state,
                {custom_id: waiter.body for custom_id, waiter in calls.items()},
                on_state=save,
                on_progress=lambda job, state: self._show(state),
                on_results=hand_over,
            )
        except BatchAPIError as exc:
            if any(job.batch_id and not job.collected for job in state.jobs):
                raise  # batches hold some of these requests: the shard fails, and a re-run picks them up
            # Nothing at the provider (an upload or create refused): the calls fail like live calls, typed, and the
            # batches never created are closed, so a re-run sends those rollouts afresh (a new custom_id each).
            for job in state.jobs:
                if job.batch_id is None:
                    job.status, job.collected, job.final_failures = "failed", True, len(job.custom_ids)
            save(state)
            error = RequestFailure("", "refused", str(exc), exc.status_code, exc.retryable)
            for waiter in calls.values():
                self._resolve(waiter, {"failure": asdict(error), "attempts": 1})
            calls.clear()
        finally:
            results.commit()
        self._show(state, final=True)
        for custom_id, waiter in calls.items():  # held by a batch that was handed over without it: send it again
            message = "no result was stored for this request; a re-run sends it again"
            self._resolve(waiter, {"failure": asdict(RequestFailure(custom_id, "missing", message)), "attempts": 1})

    def _stored_results(self, turn: int) -> dict[str, dict[str, Any]]:
        path = self._path(turn, ".results.jsonl")
        if not self.store.exists(*path):
            return {}
        stored: dict[str, dict[str, Any]] = {}
        for line in self.store.iter_lines(*path):
            record = loads(line)
            stored[record["custom_id"]] = record  # handed over again after a kill: the last one wins
        return stored

    @staticmethod
    def _resolve(waiter: _Waiter, line: dict[str, Any]) -> None:
        if waiter.future.done():
            return
        attempts = int(line.get("attempts") or 1)
        if "reply" in line:
            waiter.future.set_result((line["reply"], attempts))
        else:
            waiter.future.set_result((RequestFailure(**line["failure"]), attempts))

    def _show(self, state: BatchState, *, final: bool = False) -> None:
        """The shard's batch counts onto the progress board (requests, answered so far, batches in flight, ids
        known), earlier turns included; `final` at a turn's end, whose counts then become the base of the next
        turn's."""
        counts = state.progress()
        running = 0 if final else sum(job.in_flight for job in state.jobs)
        ids = sum(bool(getattr(job, key)) for job in state.jobs for key in _ID_FIELDS)
        now = _Shown(
            self._base.requests + counts.total,
            self._base.answered + counts.completed + counts.failed,
            running,
            self._base.ids + ids,
        )
        self.board.add_batch(
            requests=now.requests - self._shown.requests,
            answered=now.answered - self._shown.answered,
            running=now.running - self._shown.running,
            ids=now.ids - self._shown.ids,
        )
        self._shown = now
        if final:
            self._base = _Shown(now.requests, now.answered, 0, now.ids)


def batch_api(config: CollectConfig, auth: EndpointAuth) -> BatchAPI:
    """The Files and Batch APIs of the run's endpoint, with the same headers (key, extra headers) as its live calls;
    every credential among them is masked in its error messages."""
    headers = auth.request_headers()
    client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(config.endpoint.request_timeout))
    secrets = [*header_secrets(headers.items()), *option_secrets(config.storage.options)]
    return BatchAPI(config.endpoint.base_url, client=client, secrets=secrets, owns_client=True)


def live_tokens(store: Store) -> dict[str, int]:
    """Input and output tokens of the run's live fallback calls (each call once, however often a run was resumed)."""
    calls: dict[tuple[str, str, int], tuple[int, int]] = {}
    for path in store.glob(f"{FOLDER}/*/{LIVE_LOG}"):
        shard = path.replace("\\", "/").rsplit("/", 2)[-2]
        for line in store.iter_lines(FOLDER, shard, LIVE_LOG):
            record = loads(line)
            calls[(shard, record["custom_id"], record["turn"])] = (record["input"], record["output"])
    return {"input": sum(i for i, _ in calls.values()), "output": sum(o for _, o in calls.values())}


_ENDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")


def turn_states(store: Store) -> Iterator[tuple[str, int, BatchState]]:
    """(shard, turn, state) of every turn of the run that has batch state."""
    for path in store.glob(f"{FOLDER}/*/turn-*.json"):
        shard = path.replace("\\", "/").rsplit("/", 2)[-2]
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        raw = store.read_json(FOLDER, shard, name)
        if raw:
            yield shard, int(name.removeprefix("turn-").removesuffix(".json")), BatchState.model_validate(raw)


def batch_ids(store: Store) -> list[dict[str, Any]]:
    """Every batch of the run with its ids (input, batch, output and error file) and status: the manifest's
    `batches`, in shard, turn and batch order."""
    rows = [
        {"shard": shard, "turn": turn, "batch": job.key, "status": job.status}
        | {key: getattr(job, key) for key in _ID_FIELDS}
        for shard, turn, state in turn_states(store)
        for job in state.jobs
    ]
    return sorted(rows, key=lambda r: (r["shard"], r["turn"], r["batch"]))


def record_batches(run: RunRef) -> list[dict[str, Any]]:
    """Copy every batch's ids and status into the run's manifest (`batches`); the flow, the manifest's one writer,
    calls it whenever a file or batch id appears or a batch ends. The shards' state files stay the record a resume
    reads."""
    store = run_store(run)
    batches = batch_ids(store)
    write_manifest(store, run, batches=batches)
    return batches


def batch_timeline(store: Store) -> list[dict[str, Any]]:
    """Every batch of the run, for the report: shard, turn, key, batch id, status, requests and counts, when it was
    submitted, and the seconds from then until it ran (in progress) and until it ended."""
    rows = []
    for shard, turn, state in turn_states(store):
        for job in state.jobs:
            times = job.timeline
            submitted = times.get("created_at")
            ended = next((times[key] for key in _ENDS if key in times), None)
            counts = job.request_counts
            rows.append(
                {
                    "shard": shard,
                    "turn": turn,
                    "batch": job.key,
                    "batch_id": job.batch_id,
                    "status": job.status,
                    "requests": len(job.custom_ids),
                    "completed": counts.completed if counts else None,
                    "failed": counts.failed if counts else None,
                    "submitted_at": submitted,
                    "in_progress_after_s": _after(submitted, times.get("in_progress_at")),
                    "ended_after_s": _after(submitted, ended),
                }
            )
    return sorted(rows, key=lambda r: (r["submitted_at"] or 0, r["shard"], r["turn"], r["batch"]))


def _after(start: int | None, end: int | None) -> int | None:
    return end - start if start is not None and end is not None else None

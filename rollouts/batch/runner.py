"""Send requests through a provider's Batch API: plan, upload, create, poll, collect, resubmit what is missing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollouts.batch.api import BatchAPI, BatchAPIError, BatchObject, maybe_await
from rollouts.batch.jsonl import BatchLimits, ResultLine, read_results, request_line, split_sizes
from rollouts.batch.results import JobResults, RequestFailure, classify
from rollouts.batch.state import BatchJob, BatchState

StateCallback = Callable[[BatchState], Awaitable[None] | None]
ProgressCallback = Callable[[BatchJob, BatchState], Awaitable[None] | None]
ResultsCallback = Callable[[BatchJob, JobResults], Awaitable[None] | None]
Requests = Mapping[str, Mapping[str, Any]]


class BatchRunError(RuntimeError):
    """A batch run that cannot go on as asked (e.g. resumed without the bodies of requests it must still send)."""


@dataclass(slots=True)
class BatchOutcome:
    """What a run handed over: counts always; the replies and failures themselves only when run without on_results."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, RequestFailure] = field(default_factory=dict)
    succeeded: int = 0
    failed: int = 0


class BatchRunner:
    """Runs a BatchState to the end: every request gets a reply or a final failure, in as few batches as it can.

    `max_rounds` bounds the batches one request may go through: a request that a batch failed retryably (429, 5xx),
    or that an expired batch or one cancelled by someone else did not run, goes into a new batch until then; after
    that, and for permanent failures (other 4xx, a refused file), its failure is final. With `max_rounds=1` nothing
    is sent again, so a caller can send the retryable failures as live calls instead.
    """

    def __init__(
        self,
        api: BatchAPI,
        *,
        limits: BatchLimits | None = None,
        poll_interval_s: float = 30.0,
        max_rounds: int = 3,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.api = api
        self.limits = limits or BatchLimits()
        self.poll_interval_s = poll_interval_s
        self.max_rounds = max_rounds
        self.metadata = dict(metadata or {})

    async def run(
        self,
        state: BatchState,
        requests: Requests | None = None,
        *,
        on_state: StateCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_results: ResultsCallback | None = None,
    ) -> BatchOutcome:
        """Batch the `requests` (custom_id -> request body) that no batch of `state` holds yet, then drive every batch
        of `state` to its end, resubmitting what is missing; resuming is calling this again with the saved state.

        on_state(state) runs whenever the state changes (store `state.to_json()`: ids are in it as soon as they
        exist); on_progress(job, state) after each poll of a batch in flight; on_results(job, results) once per
        finished batch with its replies and final failures. A batch counts as handed over only after on_results
        returns, so a run killed inside it hands that batch over again when resumed (at least once, keyed by
        custom_id). Requests resumed runs must still send (not uploaded yet, or to resubmit) need their bodies.
        """
        requests = requests or {}
        outcome = BatchOutcome()
        assigned = state.assigned()
        fresh = {custom_id: body for custom_id, body in requests.items() if custom_id not in assigned}
        if fresh:
            too_large = self._plan(state, fresh, round_=0)
            await maybe_await(on_state(state) if on_state else None)
            if too_large:
                limit = self.limits.max_bytes
                failures = {
                    custom_id: RequestFailure(
                        custom_id, "too_large", f"the request line passes {limit} bytes", None, False
                    )
                    for custom_id in too_large
                }
                await self._hand_over(
                    BatchJob(key="too-large", custom_ids=too_large), JobResults(failures=failures), outcome, on_results
                )
        while not state.done:
            for job in [job for job in state.jobs if not job.collected and not job.terminal]:
                if job.batch_id is None:
                    await self._submit(job, state, requests, on_state)
                else:
                    if job.update(await self.api.retrieve(job.batch_id)):
                        await maybe_await(on_state(state) if on_state else None)
                    await maybe_await(on_progress(job, state) if on_progress else None)
            for job in [job for job in state.jobs if not job.collected and job.terminal]:
                await self._collect(job, state, requests, outcome, on_state, on_results)
            if any(not job.collected for job in state.jobs):
                await asyncio.sleep(self.poll_interval_s)
        return outcome

    async def cancel(self, state: BatchState, *, on_state: StateCallback | None = None) -> None:
        """Cancel every batch of `state` not finished yet; what they did not run ends as final "cancelled" failures
        when the run is driven to its end (`run` again), and is not sent again."""
        for job in state.jobs:
            if job.collected or job.terminal:
                continue
            job.cancel_requested = True
            if job.batch_id is None and job.input_file_id is not None:  # created, maybe, by a run that was killed
                found = await self.api.find_by_input_file(job.input_file_id, since=job.uploaded_at or 0)
                if found is not None:
                    job.update(found)
            if job.batch_id is None:
                job.status = "cancelled"  # nothing at the provider to cancel
            elif not job.terminal:
                job.update(await self.api.cancel(job.batch_id))
        await maybe_await(on_state(state) if on_state else None)

    def _plan(self, state: BatchState, requests: Requests, round_: int) -> list[str]:
        """Append jobs for `requests`, split by the limits; returns the custom_ids too large for any file. Only the
        sizes are kept: each file is serialised again when uploaded, so a shard's files are never all in memory."""
        endpoint = state.endpoint
        sizes = ((custom_id, len(request_line(custom_id, endpoint, body))) for custom_id, body in requests.items())
        groups, too_large = split_sizes(sizes, self.limits)
        for custom_ids in groups:
            state.jobs.append(BatchJob(key=state.next_key(round_), round=round_, custom_ids=custom_ids))
        return too_large

    async def _submit(
        self, job: BatchJob, state: BatchState, requests: Requests, on_state: StateCallback | None
    ) -> None:
        """Upload the job's file (when not yet uploaded) and create its batch, or adopt the one already created."""
        if job.status == "planned":
            missing = [custom_id for custom_id in job.custom_ids if custom_id not in requests]
            if missing:
                raise BatchRunError(
                    f"batch {job.key} is not uploaded yet and needs the bodies of {len(missing)} "
                    f"requests, e.g. {missing[0]!r}: pass the same requests when resuming"
                )
            endpoint = state.endpoint
            data = b"".join(request_line(custom_id, endpoint, requests[custom_id]) for custom_id in job.custom_ids)
            uploaded = await self.api.upload(data, f"{job.key}.jsonl")
            del data
            job.input_file_id, job.uploaded_at, job.status = uploaded.id, uploaded.created_at, "creating"
            await maybe_await(on_state(state) if on_state else None)
            batch = await self._create(job, state, search_first=False)
        else:  # "creating": this batch may exist already
            batch = await self._create(job, state, search_first=True)
        job.update(batch)
        await maybe_await(on_state(state) if on_state else None)

    async def _create(self, job: BatchJob, state: BatchState, *, search_first: bool) -> BatchObject:
        """Create the job's batch once: before any new attempt, look for a batch made from its input file."""
        assert job.input_file_id is not None
        metadata = {**self.metadata, "rollouts_batch": job.key}
        attempt = 0
        while True:
            if search_first:
                found = await self.api.find_by_input_file(job.input_file_id, since=job.uploaded_at or 0)
                if found is not None:
                    return found
            try:
                return await self.api.create(job.input_file_id, state.endpoint, metadata)
            except BatchAPIError as exc:
                if not exc.retryable or attempt >= self.api.retries:
                    raise
            backoff = min(30.0, self.api.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
            await asyncio.sleep(backoff)
            attempt += 1
            search_first = True  # the failed call may have created it

    async def _collect(
        self,
        job: BatchJob,
        state: BatchState,
        requests: Requests,
        outcome: BatchOutcome,
        on_state: StateCallback | None,
        on_results: ResultsCallback | None,
    ) -> None:
        """Read a finished batch's files, hand over its replies and final failures, and plan what goes again."""
        lines: list[ResultLine] = []
        for file_id in (job.output_file_id, job.error_file_id):
            if file_id:
                lines.extend(read_results(await self.api.content(file_id)))
        results = classify(
            job.custom_ids,
            lines,
            batch_id=job.batch_id or "",
            status=job.status,
            errors=job.errors,
            attempts=job.round + 1,
        )
        again = {
            custom_id: failure
            for custom_id, failure in results.failures.items()
            if failure.retryable and job.round + 1 < self.max_rounds and not job.cancel_requested
        }
        missing = [custom_id for custom_id in again if custom_id not in requests]
        if missing:
            raise BatchRunError(
                f"{len(again)} requests of batch {job.key} must be sent again and {len(missing)} "
                f"bodies are missing, e.g. {missing[0]!r}: pass the same requests when resuming"
            )
        for custom_id in again:
            del results.failures[custom_id]
        await self._hand_over(job, results, outcome, on_results)
        if again:
            self._plan(state, {custom_id: requests[custom_id] for custom_id in again}, round_=job.round + 1)
        job.collected = True
        job.final_failures = len(results.failures)
        await maybe_await(on_state(state) if on_state else None)

    @staticmethod
    async def _hand_over(
        job: BatchJob, results: JobResults, outcome: BatchOutcome, on_results: ResultsCallback | None
    ) -> None:
        outcome.succeeded += len(results.replies)
        outcome.failed += len(results.failures)
        if on_results is not None:
            await maybe_await(on_results(job, results))
        else:
            outcome.replies.update(results.replies)
            outcome.failures.update(results.failures)

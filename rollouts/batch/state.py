"""The resumable record of a batch run: which requests each batch holds, and its file and batch ids once they exist."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollouts.batch.api import TERMINAL, BatchObject, RequestCounts
from rollouts.batch.jsonl import check_endpoint

STATE_VERSION = 1


class BatchJob(BaseModel):
    """One batch: its requests, and its ids and status as far as they are known.

    status: "planned" (nothing sent yet), "creating" (the input file is uploaded and a batch may have been created
    from it: resuming looks for that batch before creating one), then the provider's status (validating,
    in_progress, finalizing, completed, failed, expired, cancelling, cancelled).
    """

    model_config = ConfigDict(extra="forbid")

    key: str  # unique within the state: "r<round>-<n>"
    round: int = 0  # 0 for the first submission, n for the n-th resubmission of what an earlier batch missed
    custom_ids: list[str]
    status: str = "planned"
    input_file_id: str | None = None
    uploaded_at: int | None = None  # the input file's created_at, which bounds the search for its batch
    batch_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)
    timeline: dict[str, int] = Field(default_factory=dict)  # the provider's created_at, in_progress_at, ...
    cancel_requested: bool = False  # cancelled on purpose: what it misses is not sent again
    collected: bool = False  # results handed over; its leftovers, if any, are in a later job
    final_failures: int = 0  # failures handed over as final when collected

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def in_flight(self) -> bool:
        """Created at the provider and not finished yet."""
        return self.batch_id is not None and not self.terminal

    def update(self, batch: BatchObject) -> bool:
        """Take the provider's view of this batch; True when its status changed."""
        changed = batch.status != self.status
        self.batch_id = batch.id
        self.status = batch.status
        self.output_file_id = batch.output_file_id
        self.error_file_id = batch.error_file_id
        self.request_counts = batch.request_counts
        self.errors = batch.error_list()
        self.timeline.update(batch.timeline())
        return changed


class BatchState(BaseModel):
    """Every batch of one set of requests (a shard, or one turn of a shard's multi-turn rollouts).

    Serialise it with `to_json()` and store it the moment it changes (BatchRunner's `on_state`): a run resumed from
    it polls the batches in flight, creates the ones not created yet, and never sends a request twice while a batch
    holding it may still answer. No credential is ever part of it.
    """

    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    endpoint: str
    completion_window: str = "24h"
    jobs: list[BatchJob] = Field(default_factory=list)

    @classmethod
    def new(cls, endpoint: str) -> BatchState:
        return cls(endpoint=check_endpoint(endpoint))

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchState:
        state = cls.model_validate_json(text)
        if state.version != STATE_VERSION:
            raise ValueError(f"batch state version {state.version} is not {STATE_VERSION}")
        return state

    def to_json(self) -> str:
        return self.model_dump_json()

    def assigned(self) -> set[str]:
        """custom_ids some batch holds or held: they are never planned again (their resubmissions come from here)."""
        return {custom_id for job in self.jobs for custom_id in job.custom_ids}

    def attempts(self, custom_id: str) -> int:
        return sum(custom_id in job.custom_ids for job in self.jobs)

    def next_key(self, round_: int) -> str:
        return f"r{round_}-{len(self.jobs)}"

    @property
    def done(self) -> bool:
        """All batches finished and their results handed over."""
        return all(job.collected for job in self.jobs)

    def progress(self) -> RequestCounts:
        """For a progress bar: distinct requests, replies so far, and failures that are final (not sent again)."""
        counts = RequestCounts(total=len(self.assigned()), failed=sum(job.final_failures for job in self.jobs))
        counts.completed = sum(job.request_counts.completed for job in self.jobs if job.request_counts)
        return counts

    def timeline(self) -> list[dict[str, Any]]:
        """Per batch: key, round, batch id, status, request count and the provider's timestamps (for a report)."""
        return [
            {
                "key": job.key,
                "round": job.round,
                "batch_id": job.batch_id,
                "status": job.status,
                "requests": len(job.custom_ids),
                **job.timeline,
            }
            for job in self.jobs
        ]

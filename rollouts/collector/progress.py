"""Live counters of a collection, owned by the collector process (see runtime.py), read by the terminal progress bar."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Snapshot:
    total: int
    generated: int
    verified: int
    failed: int
    reward_sum: float
    started: float | None
    resumed: int = 0
    phase: str = ""
    batch_requests: int = 0  # batch mode: requests sent in batches, answered so far, batches in flight
    batch_answered: int = 0
    batch_running: int = 0
    batch_ids: int = 0  # file and batch ids the batches have so far (the flow copies them into the manifest)
    started_with: int = 0  # rollouts generated in the report that started the clock (see ProgressBoard.add)

    @property
    def done(self) -> int:
        return self.generated + self.failed

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.verified if self.verified else None

    @property
    def rate(self) -> float:
        """Rollouts generated per second since the clock started, not counting those that started it: a worker
        reports several at once, and counting them over the instant since they arrived read as a burst."""
        if not self.started:
            return 0.0
        return (self.generated - self.started_with) / max(time.monotonic() - self.started, 1e-9)


@dataclass
class ProgressBoard:
    total: int = 0
    generated: int = 0
    verified: int = 0
    failed: int = 0
    reward_sum: float = 0.0
    started: float | None = None
    started_with: int = 0  # the rollouts of the report that started the clock: not in the rate
    resumed: int = 0  # rollouts an earlier attempt of the run already finished
    phase: str = ""  # what the run is doing now, for the terminal ("starting Prefect", "reading prompts", ...)
    batch_requests: int = 0  # batch mode: the batches' request counts (rollouts/stages/batched.py)
    batch_answered: int = 0
    batch_running: int = 0
    batch_ids: int = 0
    ui_url: str | None = None  # the flow run's page in the Prefect UI, once the flow has started
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    phases: list[tuple[str, float]] = field(default_factory=list)  # (phase, monotonic start), for --verbose

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phases.append((phase, time.monotonic()))

    def phase_times(self, until: float | None = None) -> list[tuple[str, float]]:
        """Seconds spent in each phase so far, in order."""
        ends = [t for _, t in self.phases[1:]] + [until or time.monotonic()]
        return [(name, end - start) for (name, start), end in zip(self.phases, ends, strict=True)]

    def set_ui_url(self, url: str | None) -> None:
        self.ui_url = url

    def reset(self, total: int = 0) -> None:
        with self._lock:
            self.total, self.generated, self.verified, self.failed, self.reward_sum = total, 0, 0, 0, 0.0
            self.resumed = 0
            self.batch_requests = self.batch_answered = self.batch_running = self.batch_ids = 0
            self.started, self.started_with = None, 0
            self.phase, self.ui_url = "", None
            self.phases = []

    def add_total(self, n: int) -> None:
        with self._lock:
            self.total += n

    def add(
        self, generated: int = 0, failed: int = 0, verified: int = 0, reward: float = 0.0, resumed: int = 0
    ) -> None:
        with self._lock:
            self.resumed += resumed
            if self.started is None and (generated or failed):
                self.started, self.started_with = time.monotonic(), generated
            self.generated += generated
            self.failed += failed
            self.verified += verified
            self.reward_sum += reward

    def add_batch(self, requests: int = 0, answered: int = 0, running: int = 0, ids: int = 0) -> None:
        """Changes of the batch counts: requests put in batches, requests answered (or failed for good), batches in
        flight, file and batch ids known."""
        with self._lock:
            self.batch_requests += requests
            self.batch_answered += answered
            self.batch_running += running
            self.batch_ids += ids

    def add_delta(self, delta: dict[str, Any]) -> None:
        """A worker's change of counts (`ReportedCounts.pending`), as it arrives in the process that shows them."""
        self.add(
            generated=int(delta["generated"]),
            failed=int(delta["failed"]),
            verified=int(delta["verified"]),
            reward=float(delta["reward_sum"]),
            resumed=int(delta["resumed"]),
        )
        self.add_batch(
            int(delta.get("batch_requests", 0)),
            int(delta.get("batch_answered", 0)),
            int(delta.get("batch_running", 0)),
            int(delta.get("batch_ids", 0)),
        )

    def add_shard(self, result: Any) -> None:
        """A whole shard at once (a ShardResult), for shards that ran in another process."""
        self.add(generated=result.rollouts, failed=result.failed, verified=result.rollouts, reward=result.reward_sum)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                self.total,
                self.generated,
                self.verified,
                self.failed,
                self.reward_sum,
                self.started,
                self.resumed,
                self.phase,
                self.batch_requests,
                self.batch_answered,
                self.batch_running,
                self.batch_ids,
                self.started_with,
            )


REPORTED_COUNTS = (
    "generated",
    "failed",
    "verified",
    "reward_sum",
    "resumed",
    "batch_requests",
    "batch_answered",
    "batch_running",
    "batch_ids",
)


class ReportedCounts:
    """What a worker process (a collector process, a Dask or Ray worker) already reported of its board's counts to
    the process that shows progress: `pending` is the change since, `mark` records that it was sent."""

    def __init__(self) -> None:
        self.reported: dict[str, float] = {key: 0.0 if key == "reward_sum" else 0 for key in REPORTED_COUNTS}
        self._now = self.reported

    def pending(self, snap: Snapshot) -> dict[str, float]:
        """The change of the counts in `snap` since the last `mark`; empty when nothing changed."""
        self._now = {key: getattr(snap, key) for key in REPORTED_COUNTS}  # counts stay ints, the reward a float
        delta = {key: self._now[key] - self.reported[key] for key in REPORTED_COUNTS}
        return delta if any(delta.values()) else {}

    def mark(self) -> None:
        """The counts of the last `pending` reached the other process."""
        self.reported = self._now

"""Failed rollouts after the fact: which ones a re-run can fix, how (regenerate or re-verify), and the run's counts.

Every generation failure is tried again by a re-run. A rollout recorded ok at generation that then failed
verification is regenerated, unless its failure is permanent: the verifier choked on what the model produced (a
malformed reply), or a remote environment's session belonged to that generation (a restarted NeMo Gym server answers
422 "no live session"), and only a new generation, with a new session, can fix either. Verifying the same response
again could not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rollouts.client.retry import RetryPolicy
from rollouts.records import dumps, loads

# Error types no re-run of the same command can fix (the record's own `retryable` says so when it has one).
_PERMANENT_TYPES = frozenset({"ResponseTooLarge", "ConfigError", "RowError", "InternalError"})


def is_retryable(error: dict[str, Any] | None) -> bool:
    """Whether running the same command again may make this failure succeed."""
    if not isinstance(error, dict):
        return True
    value = error.get("retryable")
    if isinstance(value, bool):
        return value
    # Records written before errors carried `retryable`: judge by type and status.
    if error.get("type") in _PERMANENT_TYPES:
        return False
    status = error.get("status_code")
    if error.get("type") == "ProviderError" and isinstance(status, int):
        return RetryPolicy.retryable(status)
    return True


def regenerates(record: dict[str, Any]) -> bool:
    """A rollout that failed verification in a way only a new generation can fix."""
    error = record.get("error") or {}
    return record.get("status") == "failed" and error.get("stage") == "verify" and is_retryable(error)


def resume_state(
    generations: Iterable[dict[str, Any]], failures: Iterable[dict[str, Any]]
) -> tuple[set[str], dict[str, int]]:
    """(rollouts that need no new generation, attempts so far of the others) from a shard's generation records (the
    last record of a rollout wins) and its failure rows."""
    latest: dict[str, dict[str, Any]] = {}
    for record in generations:
        latest[record["rollout_id"]] = record
    done = {rid for rid, record in latest.items() if record.get("status") == "ok"}
    prior = {rid: int(record.get("attempts") or 1) for rid, record in latest.items() if rid not in done}
    for failure in failures:
        rid = failure.get("rollout_id")
        if rid not in done or not regenerates(failure):
            continue
        generated = latest[rid]  # every rollout in `done` has a latest generation
        # Only the failure of the latest generation counts: a newer one, not yet verified, is verified instead.
        if int(generated.get("attempts") or 1) <= int(failure.get("attempts") or 1):
            done.discard(rid)
            prior[rid] = int(failure.get("attempts") or 1)
    return done, prior


def compacted(lines: Iterable[str], verified: set[str]) -> Iterator[str]:
    """A shard's generation lines once verified: the last record of each rollout, a small stub for verified ones.

    The verified row in `rollouts/` holds the whole response; a second full copy in `generations/` is only needed
    while a rollout waits for verification (or failed it).
    """
    latest: dict[str, str] = {}
    for line in lines:
        try:
            record = loads(line)
        except ValueError:
            continue
        rid = record.get("rollout_id")
        if rid in verified:
            latest[rid] = dumps(
                {"rollout_id": rid, "status": "ok", "attempts": record.get("attempts", 1), "verified": True}
            )
        elif rid is not None:
            latest.pop(rid, None)  # keep the file in the order records were last written
            latest[rid] = line.rstrip("\n")
    return iter(latest.values())


def _label(error: dict[str, Any]) -> str:
    kind = str(error.get("type") or "unknown error")
    status = error.get("status_code")
    return f"{kind} HTTP {status}" if isinstance(status, int) else kind


@dataclass
class FailureCounts:
    """Failed rollouts split into those a re-run may fix and those it will not, by error type."""

    retryable: Counter[str] = field(default_factory=Counter)
    permanent: Counter[str] = field(default_factory=Counter)

    @property
    def retryable_total(self) -> int:
        return sum(self.retryable.values())

    @property
    def permanent_total(self) -> int:
        return sum(self.permanent.values())

    def add(self, error: dict[str, Any] | None, count: int = 1) -> None:
        label = _label(error or {})
        (self.retryable if is_retryable(error) else self.permanent)[label] += count

    def describe(self) -> str:
        """E.g. "9 may succeed when run again (ProviderTimeout 7, ...); 3 will not without a change (...)"."""
        parts = []
        if self.retryable:
            parts.append(
                f"{self.retryable_total} may succeed when the same command runs again ({_top(self.retryable)})"
            )
        if self.permanent:
            parts.append(
                f"{self.permanent_total} will not without a change to the input, options or servers "
                f"({_top(self.permanent)})"
            )
        return "; ".join(parts)


def _top(counter: Counter[str], limit: int = 4) -> str:
    items = counter.most_common()
    text = ", ".join(f"{label} ×{count}" for label, count in items[:limit])
    return text + (f", {len(items) - limit} more types" if len(items) > limit else "")


def failure_counts(rows: Iterable[dict[str, Any]], missing: int = 0) -> FailureCounts:
    """Counts over a run's failure rows; `missing` rollouts (of shards whose tasks never finished) are retryable."""
    counts = FailureCounts()
    for row in rows:
        counts.add(row.get("error"))
    if missing:
        counts.retryable["not generated (shard task did not finish)"] += missing
    return counts

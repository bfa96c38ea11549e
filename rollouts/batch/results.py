"""What became of each request of a finished batch: a reply, or a typed failure that says if sending it again helps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rollouts.batch.jsonl import ResultLine

# HTTP statuses worth sending again (as for live calls): timeouts, conflicts, rate limits and server errors.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
# Error codes of a failed batch that come from load, not from its file: the same file may succeed later.
_TRANSIENT_BATCH_CODES = frozenset({"token_limit_exceeded", "rate_limit_exceeded", "server_error"})


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


@dataclass(frozen=True, slots=True)
class RequestFailure:
    """A request a batch did not answer with 2xx.

    kind: "http" (answered with an error status), "error" (an error line without a response), "expired" or
    "cancelled" (the batch ended before the request ran), "missing" (in no result file), "batch_failed" (the whole
    batch failed, e.g. its file was refused) or "too_large" (the request alone passes the per-file byte limit).
    """

    custom_id: str
    kind: str
    message: str
    status_code: int | None = None
    retryable: bool = True
    batch_id: str | None = None
    attempts: int = 1  # batches that held this request

    def as_record(self, stage: str = "generate") -> dict[str, Any]:
        """The failure as the typed error record of a failed rollout (type, message, status_code, stage, ...)."""
        where = f" in batch {self.batch_id}" if self.batch_id else ""
        return {
            "type": "ProviderError",
            "message": f"batch request {self.kind}{where}: {self.message}"[:1000],
            "status_code": self.status_code,
            "stage": stage,
            "retryable": self.retryable,
            "attempts": self.attempts,
        }


@dataclass(slots=True)
class JobResults:
    """The outcome of one batch: replies by custom_id and failures by custom_id (each request in exactly one)."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, RequestFailure] = field(default_factory=dict)


def _error_message(body: dict[str, Any] | None, status: int) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return f"HTTP {status}: {error['message']}"
    return f"HTTP {status}"


def _line_failure(line: ResultLine, batch_id: str, attempts: int) -> RequestFailure:
    if line.status_code is not None:
        return RequestFailure(
            line.custom_id,
            "http",
            _error_message(line.body, line.status_code),
            line.status_code,
            retryable_status(line.status_code),
            batch_id,
            attempts,
        )
    code = str((line.error or {}).get("code") or "unknown")
    message = f"{code}: {(line.error or {}).get('message') or 'no message'}"
    if code == "batch_expired":
        return RequestFailure(line.custom_id, "expired", message, None, True, batch_id, attempts)
    if code == "batch_cancelled":
        return RequestFailure(line.custom_id, "cancelled", message, None, True, batch_id, attempts)
    return RequestFailure(line.custom_id, "error", message, None, not code.startswith("invalid"), batch_id, attempts)


def classify(
    custom_ids: Iterable[str],
    lines: Iterable[ResultLine],
    *,
    batch_id: str,
    status: str,
    errors: list[dict[str, Any]] | None = None,
    attempts: int = 1,
) -> JobResults:
    """Each of a batch's requests as a reply or a failure, from its output and error lines and its final status.

    A request in no file is "missing" when the batch completed, or takes the batch's status ("expired",
    "cancelled"); every request of a "failed" batch fails with the batch's errors. Lines for other custom_ids are
    ignored, and a reply wins over an error line for the same request.
    """
    wanted = list(custom_ids)
    known = set(wanted)
    results = JobResults()
    if status == "failed":
        codes = {str(error.get("code")) for error in errors or ()}
        text = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in (errors or [])[:3])
        retryable = bool(codes) and codes <= _TRANSIENT_BATCH_CODES
        for custom_id in wanted:
            results.failures[custom_id] = RequestFailure(
                custom_id, "batch_failed", text or "the batch failed", None, retryable, batch_id, attempts
            )
        return results
    for line in lines:
        if line.custom_id not in known or line.custom_id in results.replies:
            continue
        if line.ok:
            assert line.body is not None
            results.replies[line.custom_id] = line.body
            results.failures.pop(line.custom_id, None)
        else:
            results.failures[line.custom_id] = _line_failure(line, batch_id, attempts)
    kind = status if status in ("expired", "cancelled") else "missing"
    for custom_id in wanted:
        if custom_id not in results.replies and custom_id not in results.failures:
            message = (
                f"the batch ended {status} before this request ran"
                if kind != "missing"
                else f"the {status} batch returned no line for this request"
            )
            results.failures[custom_id] = RequestFailure(custom_id, kind, message, None, True, batch_id, attempts)
    return results

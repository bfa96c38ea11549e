"""FailureBreaker: stop a run early when every rollout so far failed with the same client error.

A wrong model name, a missing `/v1` on a server whose `/models` answers, or a bad key answers every request with the
same 4xx: retrying or sending thousands more requests cannot help, and "run again" is the wrong advice. Once
`threshold` rollouts have failed, none has succeeded, and all failed with one non-retryable status, no new rollout
starts; the reason is written to `<run>/stopped.json` so the verdict (in whatever process) can say why.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from rollouts.client.retry import RetryPolicy

STOPPED = "stopped.json"


class FailureBreaker:
    def __init__(self, threshold: int = 16) -> None:
        self.threshold = threshold
        self.reason: str | None = None
        self._ok = False
        self._failures = 0
        self._keys: set[tuple[Any, Any]] = set()
        self._example = ""
        self._lock = threading.Lock()

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def record(self, row: Mapping[str, Any]) -> bool:
        """Count one finished generation; True when this one trips the breaker."""
        with self._lock:
            if self._ok or self.reason is not None:
                return False
            if row.get("status") == "ok":
                self._ok = True
                return False
            error = row.get("error") or {}
            status = error.get("status_code")
            if not isinstance(status, int) or not 400 <= status < 500 or RetryPolicy.retryable(status):
                self._ok = True  # a mixed or transient picture: never trip for this run
                return False
            self._failures += 1
            self._keys.add((error.get("type"), status))
            self._example = self._example or str(error.get("message") or "")[:300]
            if len(self._keys) > 1:
                self._ok = True
                return False
            if self._failures >= self.threshold:
                self.reason = (
                    f"stopped early: the first {self._failures} rollouts all failed with HTTP {status} "
                    f"(not retryable), e.g. {self._example!r}; fix the request (--model, --model-url, "
                    "--api, the key) before running again"
                )
                return True
            return False

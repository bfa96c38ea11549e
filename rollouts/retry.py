"""The one retry policy for every HTTP call the collector makes (model endpoint, remote environments).

Retryable: connection errors, timeouts, 408/409/425/429 and every 5xx. Backoff is exponential with jitter (uniform in
[d/2, d], d = base * 2**attempt, capped); a `Retry-After` header (seconds) replaces it, capped at `retry_after_cap_s`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    base_s: float = 0.5
    cap_s: float = 30.0
    retry_after_cap_s: float = 120.0

    @staticmethod
    def retryable(status: int) -> bool:
        return status in RETRYABLE_STATUS or status >= 500

    def delay(self, attempt: int, rng: random.Random | None = None, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        if response is not None:
            after = retry_after(response)
            if after is not None:
                return min(after, self.retry_after_cap_s)
        delay = min(self.cap_s, self.base_s * (2**attempt))
        return delay * (0.5 + (rng or random).random() / 2)


def retry_after(response: httpx.Response) -> float | None:
    """A `Retry-After` header in seconds (an HTTP date is not honoured: the backoff applies instead)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None

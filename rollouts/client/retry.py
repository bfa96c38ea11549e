"""The one retry policy for every HTTP call the collector makes (model endpoint, remote environments).

Retryable: connection errors, timeouts, 408/409/425/429 and every 5xx, except an error whose message says the server
could not read the model's own output (`model_output_fault`): that is the model's fault, not the server's.
Backoff is exponential with jitter (uniform in [d/2, d], d = base * 2**attempt, capped); a `Retry-After` header
(seconds) replaces it, capped at `retry_after_cap_s`.

`transport_failure` names what really went wrong when no reply came. The aiohttp transport maps every aiohttp
connection error to `httpx.ConnectTimeout` (a refused connection and a server that hung up mid-body alike), so the
original exception, kept as the cause, decides the label and whether the request may have reached the server.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import httpx

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
# An error message saying the server failed to read what the model generated (its tool-call or output parser):
# llama.cpp's "The model produced output that does not match the expected <name> format", and the same fault as other
# servers word it ("failed to parse tool call(s)", "generated output could not be parsed").
_MODEL_OUTPUT_FAULT = re.compile(
    r"model (?:produced|generated) output|failed to parse (?:the )?(?:model'?s? )?(?:output|tool[ _]calls?)"
    r"|generated output could not be parsed",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    base_s: float = 0.5
    cap_s: float = 30.0
    retry_after_cap_s: float = 120.0

    @staticmethod
    def retryable(status: int) -> bool:
        return status in RETRYABLE_STATUS or status >= 500

    def delay(
        self,
        attempt: int,
        rng: random.Random | None = None,
        response: httpx.Response | None = None,
        retry_after_s: float | None = None,
    ) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        after = retry_after(response) if response is not None else retry_after_s
        if after is not None:
            return min(after, self.retry_after_cap_s)
        delay: float = min(self.cap_s, self.base_s * (2**attempt))
        draw = rng.random() if rng is not None else random.random()
        return delay * (0.5 + draw / 2)


def model_output_fault(status: int, body: str) -> str | None:
    """The server's own message when an error reply (4xx/5xx) says it could not read the model's output, else None.
    The message is the JSON error's (`{"error": {"message"}}` or `{"message"}`), or the plain-text body."""
    if status < 400:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = body
    if isinstance(data, dict):
        error = data.get("error", data)
        data = error.get("message") if isinstance(error, dict) else error
    message = data if isinstance(data, str) else ""
    return message.strip() if _MODEL_OUTPUT_FAULT.search(message) else None


def retry_after(response: httpx.Response) -> float | None:
    """A `Retry-After` header in seconds (an HTTP date is not honoured: the backoff applies instead)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


@dataclass(frozen=True)
class TransportFailure:
    """A request that got no usable reply: what happened, whether it was a timeout, whether the server may have
    received the request (a tool call that may have run must not be sent twice)."""

    label: str
    timeout: bool
    sent: bool


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        os_error = getattr(current, "os_error", None)  # aiohttp.ClientConnectorError keeps the socket's error here
        if isinstance(os_error, BaseException):
            yield os_error
        current = current.__cause__ or current.__context__


def transport_failure(exc: BaseException) -> TransportFailure:
    """Classify a transport-level exception (httpx's, or aiohttp's behind httpx-aiohttp) by its whole cause chain."""
    chain = list(_chain(exc))
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return TransportFailure("connection refused", timeout=False, sent=False)
    for item in chain:
        if isinstance(item, aiohttp.ClientConnectorDNSError):
            return TransportFailure(f"host name not resolved ({item})", timeout=False, sent=False)
        if isinstance(item, aiohttp.ConnectionTimeoutError):
            return TransportFailure("connect timed out", timeout=True, sent=False)
        if isinstance(item, aiohttp.ClientConnectorError):
            return TransportFailure(f"cannot connect ({item})", timeout=False, sent=False)
        if isinstance(item, aiohttp.ServerDisconnectedError):
            return TransportFailure(
                "server closed the connection before the reply was complete", timeout=False, sent=True
            )
        if isinstance(item, aiohttp.ClientPayloadError):
            return TransportFailure(f"reply body cut off ({item})", timeout=False, sent=True)
        if isinstance(item, ConnectionResetError):
            return TransportFailure("connection reset by the server", timeout=False, sent=True)
        if isinstance(item, (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            return TransportFailure("read timed out", timeout=True, sent=True)
    # No aiohttp cause (plain httpx transports): httpx's own classes are accurate.
    if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        return TransportFailure(
            "connect timed out" if isinstance(exc, httpx.ConnectTimeout) else "no free connection in time",
            timeout=True,
            sent=False,
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransportFailure(
            f"{type(exc).__name__.replace('Timeout', '').lower() or 'request'} timed out", timeout=True, sent=True
        )
    if isinstance(exc, httpx.ConnectError):
        return TransportFailure(f"cannot connect ({exc})", timeout=False, sent=False)
    if isinstance(exc, httpx.RemoteProtocolError):
        return TransportFailure(f"server broke the HTTP protocol ({exc})", timeout=False, sent=True)
    if isinstance(exc, httpx.DecodingError):
        return TransportFailure(f"reply body could not be decoded ({exc})", timeout=False, sent=True)
    return TransportFailure(
        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, timeout=False, sent=True
    )

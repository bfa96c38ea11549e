"""Reply bodies read under a byte cap: declared, streamed or compressed, nothing is read or inflated past the cap.

Model replies (`--max-response-bytes`) and resources-server replies (the same cap) both come through `read_capped`.
A compressed body is inflated here, a bounded piece at a time, rather than by httpx's decoder: httpx inflates each
network chunk whole, so a small gzip chunk could become hundreds of megabytes before any cap was checked (a 2 GB
gzip reply reached twice the cap per request in flight).
"""

from __future__ import annotations

import asyncio
import weakref
import zlib
from collections import deque

import httpx

from rollouts.client import DEFAULT_REPLY_MEMORY_BYTES
from rollouts.errors import ResponseTooLarge

_INFLATE_STEP = 1 << 16  # output bytes produced per decompress call: the most a cap check can lag behind
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(response: httpx.Response, limit: int, read: int | None = None, what: str = "reply body") -> Exception:
    seen = f" (stopped reading at {read:,})" if read is not None else ""
    return ResponseTooLarge(
        f"{what} over --max-response-bytes {limit:,}{seen}", status_code=response.status_code, retryable=False
    )


class ReplyBudget:
    """Bytes of reply bodies held while they are read, across every request on one event loop: a collector process
    runs all its rollouts on one loop (rollouts.collector.runtime), so this bounds the process, model and resources
    servers' replies together (`--max-reply-memory-bytes`), where the per-reply cap alone allowed `--parallel` times it.

    A reader takes bytes as they arrive and gives them all back once its body is read or refused. A reader that would
    pass the budget waits (the socket is not read meanwhile) until others give bytes back, except the oldest reader
    still holding bytes, which always goes on: readers never wait on each other for ever, and the bytes held are at
    most the budget plus one reply's cap.
    """

    def __init__(self, limit: int = DEFAULT_REPLY_MEMORY_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most bytes held at once
        self.waits = 0  # times a reader waited for others to give bytes back
        self._held: dict[object, int] = {}  # reader -> bytes held, oldest first (insertion order)
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _must_wait(self, reader: object, size: int) -> bool:
        oldest = next(iter(self._held), reader)
        return oldest is not reader and self.used + size > self.limit

    def take_now(self, reader: object, size: int) -> bool:
        """Hold `size` more bytes for `reader` when it need not wait (no coroutine: the per-reply hot path)."""
        if self.used + size > self.limit and self._must_wait(reader, size):
            return False
        self._held[reader] = self._held.get(reader, 0) + size
        self.used += size
        if self.used > self.peak:
            self.peak = self.used
        return True

    async def take(self, reader: object, size: int) -> None:
        """Hold `size` more bytes for `reader`, waiting while the budget is spent (unless it is the oldest)."""
        if self.take_now(reader, size):
            return
        self.waits += 1
        while not self.take_now(reader, size):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def give_back(self, reader: object) -> None:
        """Every byte `reader` holds, back to the budget; the waiting readers check again."""
        self.used -= self._held.pop(reader, 0)
        while self._waiters:  # empty unless someone waits
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReplyBudget] = weakref.WeakKeyDictionary()


def reply_budget(limit: int | None = None) -> ReplyBudget:
    """The running loop's budget, its limit set to `limit` when given (the run's `--max-reply-memory-bytes`)."""
    loop = asyncio.get_running_loop()
    budget = _BUDGETS.get(loop)
    if budget is None:
        budget = _BUDGETS[loop] = ReplyBudget()
    if limit is not None:
        budget.limit = limit
    return budget


async def read_capped(
    response: httpx.Response, limit: int, *, truncate: bool = False, budget: ReplyBudget | None = None
) -> bytes:
    """The body, refusing (or, with `truncate`, cutting) it past `limit` bytes without reading the rest; its bytes
    are held against `budget` while it is read."""
    declared = response.headers.get("content-length")
    length = int(declared) if declared and declared.isdigit() else None
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if length is not None and length > limit and not truncate:
        raise ResponseTooLarge(
            f"reply body of {length:,} bytes is over --max-response-bytes {limit:,}",
            status_code=response.status_code,
            retryable=False,
        )
    whole = length is not None and length <= limit and not encoding
    if whole and isinstance(response.stream, httpx.ByteStream):  # the usual case: the transport read it whole already
        return b"".join(response.stream)
    budget = budget or ReplyBudget(limit=1 << 62)
    reader = object()
    try:
        if whole and length is not None:
            if not budget.take_now(reader, length):
                await budget.take(reader, length)
            return await response.aread()
        if encoding in _ZLIB_WBITS:
            return await _inflate_capped(response, limit, _ZLIB_WBITS[encoding], truncate, budget, reader)
        return await _read_chunks(response, limit, truncate, budget, reader)
    finally:
        budget.give_back(reader)


async def _read_chunks(
    response: httpx.Response, limit: int, truncate: bool, budget: ReplyBudget, reader: object
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise _too_large(response, limit, size)
        await budget.take(reader, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def _inflate_capped(
    response: httpx.Response, limit: int, wbits: int, truncate: bool, budget: ReplyBudget, reader: object
) -> bytes:
    """Inflate the raw (still compressed) stream at most `_INFLATE_STEP` bytes at a time, stopping at `limit`."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    raw_read = 0
    async for raw in response.aiter_raw():
        raw_read += len(raw)
        if raw_read > limit and not truncate:  # compressed larger than the cap: its inflated size is larger still
            raise _too_large(response, limit, raw_read, "compressed reply body")
        pending = raw
        while pending:
            try:
                piece = inflater.decompress(pending, _INFLATE_STEP)
            except zlib.error as exc:
                raise httpx.DecodingError(f"cannot inflate the reply body: {exc}") from None
            pending = inflater.unconsumed_tail
            await budget.take(reader, len(piece))
            out += piece
            if len(out) > limit:
                if truncate:
                    return bytes(out[:limit])
                raise _too_large(response, limit, len(out), "inflated reply body")
            if inflater.eof:
                return bytes(out)
    return bytes(out)

"""InflightLimiter: the `--parallel` bound on rollouts in flight, shared by every shard task of a run in one process;
resizable."""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class InflightLimiter:
    """A counting semaphore usable from any thread and event loop of the process.

    Shard tasks normally share the process's collector loop, but a waiter may sit on any loop: a slot released on one
    loop is handed to the oldest waiter on whichever loop it waits (on the same loop without a self-pipe wake-up).
    `resize` changes the limit while rollouts are in flight (`--parallel auto`): a larger limit wakes waiters at once;
    a smaller one takes effect as slots are released, without interrupting anything in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def in_flight(self) -> int:
        return self.limit - self._free

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiters.remove((loop, future))
                    chosen = False
                except ValueError:  # a release already chose us
                    chosen = True
            # Chosen and granted: we hold a slot we will not use. Chosen but not yet granted: `_grant` passes it on.
            if chosen and future.done() and not future.cancelled():
                self.release()
            raise

    def resize(self, limit: int) -> None:
        """Change the limit; waiters get the new slots at once, a cut is taken back from slots as they are released."""
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1 (got {limit})")
        with self._lock:
            self._free += limit - self.limit
            self.limit = limit
            for _ in range(max(0, min(self._free, len(self._waiters)))):
                self._free -= 1
                self._hand_over()

    def release(self) -> None:
        with self._lock:
            if self._free < 0:  # the limit was cut below what is in flight: this slot goes away
                self._free += 1
                return
            self._hand_over()

    def _hand_over(self) -> None:
        """One slot to the oldest waiter on a live loop, or back to the pool when nobody waits (lock held)."""
        while self._waiters:
            loop, future = self._waiters.popleft()
            if loop.is_closed():
                continue
            if _running_loop() is loop:  # same loop: no self-pipe write and wake-up
                loop.call_soon(self._grant, future)
            else:
                loop.call_soon_threadsafe(self._grant, future)
            return
        self._free += 1

    def _grant(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():  # its waiter gave up after being chosen: pass the slot on
            self.release()
        else:
            future.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

"""One long-lived event loop per process, in a daemon thread, where every shard's requests run.

Prefect's thread-pool runner gives each async task run its own thread and event loop. With several shards in
flight, several loops then fight for the GIL and each response waits for another loop's turn: on 2 cores that
cost a sixth of the throughput at `--parallel 256` (0.74 of ideal with 3 shard loops, 0.86 with one). Shard tasks
therefore hand their coroutine to this loop and wait for it; each shard still opens its own client inside that
coroutine, so nothing outlives the shard but the loop itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def relax_garbage_collection() -> None:
    """Collect cyclic garbage less often while rollouts are collected.

    Each rollout allocates a few hundred short-lived objects, freed by reference counting. With CPython's default
    thresholds (700, 10, 10) that triggers a full collection every ~70,000 allocations, which walks the whole heap
    (Prefect, pydantic models, the run's records) and stalls every response waiting on the loop. Measured at
    --parallel 256 against a 200 ms server: 0.80-0.83 of ideal throughput with the defaults, 0.90-0.92 with
    (10000, 20, 100), and 0.71 -> 0.59 ms of collector CPU per rollout.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 10_000), max(gen1, 20), max(gen2, 100))


class BackgroundLoop:
    def __init__(self, name: str = "rollouts-collector") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                relax_garbage_collection()
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the shared loop and block the calling thread until it is done (cancelled with it)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


COLLECTOR_LOOP = BackgroundLoop()


def run_on_collector_loop(coro: Coroutine[Any, Any, T]) -> T:
    """`COLLECTOR_LOOP.run`, as a module function: task code that calls it pickles by reference (Dask workers)."""
    return COLLECTOR_LOOP.run(coro)


class SharedClients:
    """Clients leased by key (the run) on one event loop, so consecutive shards reuse warm connections.

    A client per shard would make every shard open its own connections as the global slots move between shards:
    on 2 cores, 10 shards in flight at `--parallel 256` fell from 1,119 to 930 rollouts/s. The client is created
    inside the loop, on first lease, and closed once no shard has used it for `idle_close_s`.
    """

    def __init__(self, idle_close_s: float = 2.0) -> None:
        self.idle_close_s = idle_close_s
        self._clients: dict[str, Any] = {}
        self._users: dict[str, int] = {}
        self._closers: dict[str, asyncio.TimerHandle] = {}

    @contextlib.asynccontextmanager
    async def lease(self, key: str, factory: Callable[[], Any]) -> AsyncIterator[Any]:
        closer = self._closers.pop(key, None)
        if closer is not None:
            closer.cancel()
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = factory()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield client
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                loop = asyncio.get_running_loop()
                self._closers[key] = loop.call_later(self.idle_close_s, lambda: loop.create_task(self._close(key)))

    async def close_all(self) -> None:
        for key in list(self._clients):
            self._users[key] = 0
            await self._close(key)

    async def _close(self, key: str) -> None:
        if self._users.get(key):
            return
        self._closers.pop(key, None)
        self._users.pop(key, None)
        client = self._clients.pop(key, None)
        if client is not None:
            await client.aclose()


SHARED_CLIENTS = SharedClients()


@atexit.register
def _close_clients_at_exit() -> None:
    if COLLECTOR_LOOP._loop is not None and COLLECTOR_LOOP._loop.is_running():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(SHARED_CLIENTS.close_all(), COLLECTOR_LOOP._loop).result(timeout=5)

"""What one collector process owns: its event loop, the runs' warm clients and `--parallel` limiters, its progress
board.

Prefect's thread-pool runner gives each async task run its own thread and event loop. With several shards in flight,
several loops then fight for the GIL and each response waits for another loop's turn: on 2 cores that cost a sixth of
the throughput at `--parallel 256` (0.74 of ideal with 3 shard loops, 0.86 with one). Shard tasks therefore hand their
coroutine to the process's one collector loop and wait for it. Tasks get the process's `CollectorRuntime` with
`collector()` and pass its parts (client, limiter, breaker, board, stop signal) into the core's stage functions, which
never reach for them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from rollouts.collector.breaker import FailureBreaker
from rollouts.collector.channel import reporter_from_env
from rollouts.collector.interrupt import StopSignal
from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.errors import ConfigError
from rollouts.lock import RunLocks

T = TypeVar("T")


class Pool(Protocol):
    """What the runtime needs of its collector processes: their number, and closing them at exit."""

    size: int

    def close(self) -> None: ...


P = TypeVar("P", bound=Pool)


def relax_garbage_collection(freeze: bool = True) -> None:
    """Collect cyclic garbage less often while rollouts are collected, and never walk the start-up heap again.

    A rollout's objects are freed by reference counting (the HTTP client's replies hold no cycles, see
    rollouts.client.transport), so a gen-0 collection finds almost no garbage: it only walks the young objects still
    alive, the state of the rollouts in flight, and stalls every response waiting on the loop while it does. CPython
    counts allocations net of deallocations towards the gen-0 threshold, so with little cyclic garbage a large threshold
    means few collections, each walking at most that many objects (~1.5 us each here). Measured against a 200 ms server,
    steady window only, flow vs a bare aiohttp client in the same invocation:
      (700, 10, 10), CPython's default: --parallel 256 0.80-0.83 of ideal (before replies were cycle-free)
      (10000, 20, 100):  --parallel 1024: 299 gen-0 collections, 5.1 s of GC in a 26 s window, 0.59 ms CPU/rollout
      (100000, 20, 100): --parallel 1024: 4 collections, 0.4 s, 0.50 ms CPU/rollout (1.8x the bare client's)
    Cyclic garbage that does appear (an exception and its traceback, a user's environment) is still collected,
    once 100,000 objects more are alive than at the last collection: a few tens of MB at most.

    `freeze` then moves every object alive now (the imported modules, Prefect, pydantic models: the bulk of the heap
    when the collector loop starts) to the permanent generation, which full collections skip. py-spy at
    --parallel 256 and 1024 put a fifth to a quarter of the collector's busy samples in the collector
    (`gc_collect_main`), and a full collection of that heap took ~0.5 s on a loaded 2-core machine, a stall of every
    response in flight. Frozen objects are still freed by reference counting; only cycles among them (and the
    cyclic garbage of start-up not yet collected) stay.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 100_000), max(gen1, 20), max(gen2, 100))
    if freeze and not gc.get_freeze_count():
        gc.freeze()  # no gc.collect() first: a full collection here would cost a small run ~0.3 s of start-up


EVENT_LOOP_ENV = "ROLLOUTS_EVENT_LOOP"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The collector's event loop: asyncio's own, or uvloop with `ROLLOUTS_EVENT_LOOP=uvloop` (an error when missing).

    Not uvloop by default: it measured no gain here. The collector's CPU is in httpx, aiohttp and our own Python
    code; asyncio's loop was a tenth of it. Flow at --parallel 256, 200 ms, pairs in one invocation: 0.57 ms of
    collector CPU per rollout on asyncio, 0.59 on uvloop 0.23, rates within the noise (731/775 against 717/783 r/s).
    """
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower() or "asyncio"
    if choice not in ("uvloop", "asyncio"):
        raise ConfigError(f"{EVENT_LOOP_ENV}={choice!r}: use uvloop or asyncio (the default)")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError(f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed: pip install uvloop") from None
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


class BackgroundLoop:
    """An event loop in a daemon thread, started on first use; `run` blocks the calling thread until a coroutine
    ends."""

    def __init__(self, name: str = "rollouts-collector") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def ensure(self) -> asyncio.AbstractEventLoop:
        """The loop, started in its thread on first use."""
        with self._lock:
            if self.loop is None or self.loop.is_closed():
                relax_garbage_collection()
                loop = new_event_loop()
                threading.Thread(target=loop.run_forever, name=self.name, daemon=True).start()
                self.loop = loop
            return self.loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.ensure())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


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


class CollectorRuntime:
    """The collector parts of one process, created on first use by `collector()`."""

    def __init__(self) -> None:
        self.loop = BackgroundLoop()
        self.clients = SharedClients()
        self.board = ProgressBoard()
        self.locks = RunLocks()  # the runs this process writes: one writer per run
        self.reporter = reporter_from_env(self.board)  # a Dask or Ray worker of a flow that listens for counts
        self.stop = StopSignal()  # requested by SIGINT/SIGTERM (commands/) or a caller: shards stop taking work
        self._limiters: dict[str, InflightLimiter] = {}
        self._breakers: dict[str, FailureBreaker] = {}
        self._controls: dict[str, Any] = {}
        self._pool: Pool | None = None
        self._lock = threading.Lock()

    def pool(self, workers: int, factory: Callable[[int, ProgressBoard], P]) -> P:
        """This process's collector processes for `--task-runner processes` (made by `factory`, a
        `rollouts.collector.pool.CollectorPool`), started on first use and kept for later runs of the same size."""
        with self._lock:
            if self._pool is not None and self._pool.size != workers:
                self._pool.close()
                self._pool = None
            if self._pool is None:
                self._pool = factory(workers, self.board)
            return cast(P, self._pool)

    def parallel_control(self, run_id: str, factory: Callable[[], Any]) -> Any:
        """One `--parallel auto` controller per run and process (a `rollouts.tune.control.ParallelControl`)."""
        with self._lock:
            if run_id not in self._controls:
                self._controls[run_id] = factory()
            return self._controls[run_id]

    def pop_parallel_control(self, run_id: str) -> Any:
        with self._lock:
            return self._controls.pop(run_id, None)

    def breaker(self, run_id: str) -> FailureBreaker:
        """One failure breaker per run and process: shards of the run share what they saw."""
        with self._lock:
            return self._breakers.setdefault(run_id, FailureBreaker())

    def limiter(self, run_id: str, limit: int) -> InflightLimiter:
        """One limiter per run: every shard task of the run in this process shares its slots."""
        with self._lock:
            limiter = self._limiters.get(run_id)
            if limiter is None or limiter.limit != limit:
                limiter = self._limiters[run_id] = InflightLimiter(limit)
            return limiter

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self.loop.run(coro)
        finally:
            if self.reporter is not None:  # a shard's last counts reach the flow before its result
                self.reporter.flush()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        loop = self.loop.loop
        if loop is not None and loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.clients.close_all(), loop).result(timeout=5)


_runtime: CollectorRuntime | None = None
_runtime_lock = threading.Lock()


def collector() -> CollectorRuntime:
    """This process's collector runtime (a Dask or Ray worker process gets its own)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = CollectorRuntime()
            atexit.register(_runtime.close)
        return _runtime

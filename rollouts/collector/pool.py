"""Collector processes of this machine for `--task-runner processes`: each has its own event loop, HTTP client,
failure breaker and share of `--parallel`, and runs several shards at once on that loop.

The flow's generate tasks stay Prefect task runs on threads of the flow's process; each hands its shard to the
least busy collector process and waits for its `ShardResult`. The processes import the core only (no Prefect):
started with `spawn`, two of them are ready in about a second, where Prefect's process pool task runner took
13-20 s on 2 cores (every worker imports Prefect and the flow, then runs a task engine against the API per shard)
and ran one shard at a time per process, so each shard's tail left the process's slots idle.

Messages go over one pipe per process (pickled tuples):
  parent -> child   ("shard", job, run, shard, auth)   ("stop", reason)   ("reset",)   ("close",)
  child -> parent   ("progress", counts)   ("done", job, ok, result-or-exception)
A child profiles its shards of a `--profile` run (its part of `profile/functions/`, merged by the profile stage) and
counts its rollouts on its own ProgressBoard and sends the change twice a second and before each result, so
the parent's board (the terminal's progress line) moves as rollouts finish. SIGINT is ignored in a child: Ctrl-C
reaches the parent, whose stop signal is relayed, and the child's shards flush and end with `Interrupted` as they
would on threads. A child whose parent is gone (its pipe closes) stops, flushes, and exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import multiprocessing
import pickle
import signal
import sys
import threading
import types
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from rollouts.collector.progress import ProgressBoard, ReportedCounts
from rollouts.collector.runtime import CollectorRuntime, collector
from rollouts.errors import InternalError, WorkerLost
from rollouts.report.profiler import FunctionProfiler, write_function_stats
from rollouts.run import RunRef, ShardResult, run_store
from rollouts.storage import Store

PROGRESS_EVERY_S = 0.5


_MAIN = threading.Lock()


def _start_without_main(process: Any) -> None:
    """Start a spawned process without running this process's main module again in it.

    `spawn` imports the parent's `__main__` in every child (as `__mp_main__`) unless it is a package's `__main__`.
    A deployment's flow run is `python -m prefect.engine`, so each collector process imported all of Prefect and the
    flow (~1,000 modules, ~1.5 CPU s) that it never uses; a script's main (`deployments/serve.py`) did the same. A
    collector process needs only the core, which its target (`serve`, pickled by name) imports."""
    with _MAIN:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")  # no spec, no file: nothing for the child to run
        try:
            process.start()
        finally:
            sys.modules["__main__"] = main


class _Worker:
    """One collector process and the parent's end of its pipe."""

    def __init__(self, context: Any, index: int, board: ProgressBoard, start: ShardStart) -> None:
        parent, child = context.Pipe()
        self.process = context.Process(
            target=serve, args=(child, start), name=f"rollouts-collector-{index}", daemon=True
        )
        _start_without_main(self.process)
        child.close()
        self.conn, self.board = parent, board
        self.pending: dict[int, concurrent.futures.Future[ShardResult]] = {}
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"rollouts-collector-{index}-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "progress":
                self.board.add_delta(message[1])
            elif message[0] == "done":
                _, job, ok, value = message
                future = self.pending.pop(job, None)
                if future is not None:
                    future.set_result(value) if ok else future.set_exception(value)
        self.process.join(timeout=5)
        lost = WorkerLost(
            f"collector process {self.process.pid} ended (exit code {self.process.exitcode}) with "
            f"{len(self.pending)} shard(s) in flight; they are generated again on a re-run",
            retryable=True,
        )
        for future in list(self.pending.values()):
            if not future.done():
                future.set_exception(lost)
        self.pending.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send(("close",))
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()


class CollectorPool:
    """`workers` collector processes; `submit` sends a shard to the one with the fewest shards in flight, where
    `start(runtime, run, shard, auth)` (a module-level function: it is pickled by name) makes the shard's coroutine."""

    def __init__(self, workers: int, board: ProgressBoard, start: ShardStart) -> None:
        self.size, self.board, self.start = workers, board, start
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._jobs = itertools.count()
        self._stopped = False
        self._workers = [_Worker(self._context, i, board, start) for i in range(workers)]

    def submit(self, run: RunRef, shard: str, auth: Any) -> concurrent.futures.Future[ShardResult]:
        future: concurrent.futures.Future[ShardResult] = concurrent.futures.Future()
        with self._lock:
            for i, worker in enumerate(self._workers):
                if not worker.alive:  # killed: a fresh process takes its place
                    worker.close()
                    self._workers[i] = _Worker(self._context, i, self.board, self.start)
            worker = min(self._workers, key=lambda w: len(w.pending))
            job = next(self._jobs)
            worker.pending[job] = future
        try:
            worker.send(("shard", job, run, shard, auth))
        except (OSError, ValueError) as exc:
            worker.pending.pop(job, None)
            future.set_exception(WorkerLost(f"collector process {worker.process.pid} is gone: {exc}", retryable=True))
        return future

    def stop(self, reason: str) -> None:
        """Ask every process to stop taking work; their shards flush what finished and end with `Interrupted`."""
        self._broadcast(("stop", reason))
        self._stopped = True

    def reset(self) -> None:
        """Clear a stop before the next run."""
        if self._stopped:
            self._broadcast(("reset",))
            self._stopped = False

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.send(message)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()


ShardStart = Callable[[CollectorRuntime, RunRef, str, Any], Coroutine[Any, Any, ShardResult]]


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RolloutsError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return InternalError(f"{type(exc).__name__}: {exc}")


@dataclass
class _Profiled:
    """A `--profile` run with shards in this process: its profiler, its store, and how many of its shards are here."""

    profiler: FunctionProfiler
    store: Store
    shards: int = 0


class _Child:
    """The child's side of the pipe: runs shards on the process's collector loop, reports counts and results."""

    def __init__(self, conn: Any, start: ShardStart) -> None:
        self.conn, self.start = conn, start
        self.runtime = collector()
        self.loop = self.runtime.loop.ensure()
        self.send_lock = threading.Lock()
        self.reported = ReportedCounts()
        self.in_flight: set[concurrent.futures.Future[ShardResult]] = set()
        self.closing = threading.Event()
        self.profiled: dict[str, _Profiled] = {}  # run id -> its profile, while a --profile run has shards here

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                self.closing.set()

    def progress(self) -> None:
        """Send the change of this process's counts since the last report."""
        with self.send_lock:
            delta = self.reported.pending(self.runtime.board.snapshot())
            if not delta:
                return
            self.reported.mark()
        self.send(("progress", delta))

    def report(self) -> None:
        while not self.closing.wait(PROGRESS_EVERY_S):
            self.progress()

    def profile_begin(self, run: RunRef) -> None:
        if not run.config.profiling.profile or (self.profiled and run.run_id not in self.profiled):
            return  # yappi is process-wide: one run profiled at a time
        if run.run_id not in self.profiled:
            profiler = FunctionProfiler(duty=run.config.profiling.profile_duty).start()
            self.profiled[run.run_id] = _Profiled(profiler, run_store(run))
        self.profiled[run.run_id].shards += 1

    def profile_end(self, run_id: str) -> None:
        entry = self.profiled.get(run_id)
        if entry is not None:
            entry.shards -= 1
            if entry.shards == 0:  # this process's part of the run's function profile, merged by the profile stage
                del self.profiled[run_id]
                write_function_stats(entry.store, entry.profiler.stop())

    def finished(self, job: int, run_id: str, future: concurrent.futures.Future[ShardResult]) -> None:
        self.in_flight.discard(future)
        with contextlib.suppress(Exception):  # a profile that cannot be written never fails the shard
            self.profile_end(run_id)
        self.progress()  # the counts of this shard reach the parent before its result
        if future.cancelled():
            self.send(("done", job, False, _portable(asyncio.CancelledError())))
        elif (exc := future.exception()) is not None:
            self.send(("done", job, False, _portable(exc)))
        else:
            self.send(("done", job, True, future.result()))

    def submit(self, job: int, run: RunRef, shard: str, auth: Any) -> None:
        self.profile_begin(run)
        future = asyncio.run_coroutine_threadsafe(self.start(self.runtime, run, shard, auth), self.loop)
        self.in_flight.add(future)
        future.add_done_callback(lambda f: self.finished(job, run.run_id, f))

    def serve(self) -> None:
        threading.Thread(target=self.report, name="rollouts-progress", daemon=True).start()
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the parent is gone: stop, flush, leave
                self.runtime.stop.request("the flow's process ended")
                break
            kind = message[0]
            if kind == "shard":
                self.submit(*message[1:])
            elif kind == "stop":
                self.runtime.stop.request(message[1])
            elif kind == "reset":
                self.runtime.stop.reset()
            elif kind == "close":
                break
        for future in list(self.in_flight):
            with contextlib.suppress(Exception):
                future.result(timeout=self.runtime.stop.grace_s + 30)
        self.closing.set()
        self.runtime.close()


def serve(conn: Any, start: ShardStart) -> None:
    """A collector process: run the shards the parent sends on this process's collector loop until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Child(conn, start).serve()

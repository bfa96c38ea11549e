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
import itertools
import multiprocessing
import pickle
import signal
import threading
from typing import Any

from rollouts.errors import RolloutsError
from rollouts.collector.progress import ProgressBoard
from rollouts.run import RunRef, ShardResult

_COUNTS = ("generated", "failed", "verified", "reward_sum", "resumed")
PROGRESS_EVERY_S = 0.5


class WorkerLost(RolloutsError):
    """A collector process ended with shards in flight (killed, or out of memory): they are generated again."""


class _Worker:
    """One collector process and the parent's end of its pipe."""

    def __init__(self, context: Any, index: int, board: ProgressBoard) -> None:
        parent, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child,), name=f"rollouts-collector-{index}", daemon=True)
        self.process.start()
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
                self.board.add(generated=message[1]["generated"], failed=message[1]["failed"],
                               verified=message[1]["verified"], reward=message[1]["reward_sum"],
                               resumed=message[1]["resumed"])
            elif message[0] == "done":
                _, job, ok, value = message
                future = self.pending.pop(job, None)
                if future is not None:
                    future.set_result(value) if ok else future.set_exception(value)
        self.process.join(timeout=5)
        lost = WorkerLost(f"collector process {self.process.pid} ended (exit code {self.process.exitcode}) with "
                          f"{len(self.pending)} shard(s) in flight; they are generated again on a re-run",
                          retryable=True)
        for future in list(self.pending.values()):
            if not future.done():
                future.set_exception(lost)
        self.pending.clear()

    def close(self) -> None:
        try:
            self.send(("close",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()


class CollectorPool:
    """`workers` collector processes; `submit` sends a shard to the one with the fewest shards in flight."""

    def __init__(self, workers: int, board: ProgressBoard) -> None:
        self.size, self.board = workers, board
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._jobs = itertools.count()
        self._stopped = False
        self._workers = [_Worker(self._context, i, board) for i in range(workers)]

    def submit(self, run: RunRef, shard: str, auth: Any) -> concurrent.futures.Future[ShardResult]:
        future: concurrent.futures.Future[ShardResult] = concurrent.futures.Future()
        with self._lock:
            for i, worker in enumerate(self._workers):
                if not worker.alive:  # killed: a fresh process takes its place
                    worker.close()
                    self._workers[i] = _Worker(self._context, i, self.board)
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
            try:
                worker.send(message)
            except (OSError, ValueError):
                pass

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RolloutsError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        from rollouts.errors import InternalError

        return InternalError(f"{type(exc).__name__}: {exc}")


def serve(conn: Any) -> None:
    """A collector process: run the shards the parent sends on this process's collector loop until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from rollouts.stages import generate
    from rollouts.collector.runtime import collector

    runtime = collector()
    loop = runtime.loop.ensure()
    send_lock = threading.Lock()
    sent = dict.fromkeys(_COUNTS, 0.0)
    in_flight: set[concurrent.futures.Future[Any]] = set()
    closing = threading.Event()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (OSError, ValueError):
                closing.set()

    def progress() -> None:
        with send_lock:
            snap = runtime.board.snapshot()
            now = {"generated": snap.generated, "failed": snap.failed, "verified": snap.verified,
                   "reward_sum": snap.reward_sum, "resumed": snap.resumed}
            delta = {key: now[key] - sent[key] for key in _COUNTS}
            if any(delta.values()):
                sent.update(now)
                try:
                    conn.send(("progress", delta))
                except (OSError, ValueError):
                    closing.set()

    def report() -> None:
        while not closing.wait(PROGRESS_EVERY_S):
            progress()

    threading.Thread(target=report, name="rollouts-progress", daemon=True).start()

    profiled: dict[str, Any] = {}  # run id -> [profiler, store, shards in flight] while a --profile run has shards here

    def profile_begin(run: Any) -> None:
        if not run.config.profiling.profile or (profiled and run.run_id not in profiled):
            return  # yappi is process-wide: one run profiled at a time
        if run.run_id not in profiled:
            from rollouts.report.profiler import FunctionProfiler
            from rollouts.run import run_store

            profiled[run.run_id] = [FunctionProfiler(duty=run.config.profiling.profile_duty).start(), run_store(run), 0]
        profiled[run.run_id][2] += 1

    def profile_end(run_id: str) -> None:
        entry = profiled.get(run_id)
        if entry is not None:
            entry[2] -= 1
            if entry[2] == 0:  # this process's part of the run's function profile, merged by the profile stage
                from rollouts.report.profiler import write_function_stats

                del profiled[run_id]
                write_function_stats(entry[1], entry[0].stop())

    def finished(job: int, run_id: str, future: concurrent.futures.Future[ShardResult]) -> None:
        in_flight.discard(future)
        try:
            profile_end(run_id)
        except Exception:  # a profile that cannot be written never fails the shard
            pass
        progress()  # the counts of this shard reach the parent before its result
        if future.cancelled():
            send(("done", job, False, _portable(asyncio.CancelledError())))
        elif future.exception() is not None:
            send(("done", job, False, _portable(future.exception())))
        else:
            send(("done", job, True, future.result()))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone: stop, flush, leave
            runtime.stop.request("the flow's process ended")
            break
        kind = message[0]
        if kind == "shard":
            _, job, run, shard, auth = message
            profile_begin(run)
            coro = generate.generate_shard(run, shard, clients=runtime.clients,
                                           limiter=runtime.limiter(run.run_id, run.config.parallel_per_process),
                                           board=runtime.board, breaker=runtime.breaker(run.run_id), auth=auth,
                                           stop=runtime.stop)
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            in_flight.add(future)
            future.add_done_callback(lambda f, job=job, run_id=run.run_id: finished(job, run_id, f))
        elif kind == "stop":
            runtime.stop.request(message[1])
        elif kind == "reset":
            runtime.stop.reset()
        elif kind == "close":
            break
    for future in list(in_flight):
        try:
            future.result(timeout=runtime.stop.grace_s + 30)
        except Exception:
            pass
    closing.set()
    runtime.close()

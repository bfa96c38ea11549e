"""Stopping a collection cleanly: a stop signal the stages honour, and the SIGINT/SIGTERM handlers that set it.

After `StopSignal.request()` the generate and verify stages take no new rollout, give the ones in flight
`grace_s` seconds to finish and cancel the rest (a cancelled rollout is simply not recorded: a resume redoes it),
flush what finished, and raise `Interrupted`. The signal is thread-safe and wakes waiters on any event loop, since the
handlers run in the main thread while rollouts run on the collector loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from rollouts.errors import Interrupted

T = TypeVar("T")
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_CODES: dict[int, int] = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
RESUME_HINT = "run the same command again to resume where it stopped"


class StopSignal:
    """Set once to stop taking work; `grace_s` is how long work in flight may take to finish after that."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.reason = ""
        self.exit_code = EXIT_INTERRUPTED  # what a command exits with after the stop: 130 (SIGINT) or 143 (SIGTERM)
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str = "stop requested", exit_code: int = EXIT_INTERRUPTED) -> None:
        """Safe from any thread and from a signal handler."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self.exit_code = exit_code
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, future)

    def reset(self) -> None:
        with self._lock:
            self._event.clear()
            self.reason = ""
            self.exit_code = EXIT_INTERRUPTED

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))

    def check(self) -> None:
        """Raise `Interrupted` if a stop was requested."""
        if self.is_set():
            raise Interrupted(f"{self.reason}: {RESUME_HINT}")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


NEVER = StopSignal()  # the default of callers that cannot be stopped; never requested


async def run_until_stopped(work: Coroutine[Any, Any, T], stop: StopSignal) -> tuple[bool, T | None]:
    """Run `work`; once `stop` is requested give it `stop.grace_s` more seconds, then cancel it.

    Returns (stopped, result): `result` is None when the work was cancelled. `work` itself should stop taking new
    items when `stop.is_set()`, so what runs past the request is only what was already in flight.
    """
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=stop.grace_s)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return True, None
        return stop.is_set(), task.result()
    finally:
        stopper.cancel()
        if not task.done():  # our own caller was cancelled
            task.cancel()


def install_signal_handlers(
    stop: StopSignal,
    *,
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    announce: Callable[[str], None] | None = None,
    hard_exit: Callable[[int], None] = os._exit,
) -> Callable[[], None]:
    """`signals` (SIGINT and SIGTERM) request `stop` (announced on stderr); a second one exits at once with 130 (SIGINT)
    or 143 (SIGTERM).

    Call from the main thread (elsewhere this installs nothing); returns a function that restores the previous
    handlers. What finished is on disk when a second signal exits: appended lines are flushed at most a second after
    they are written. Prefect's flow engine puts its own SIGTERM handler in place while a flow runs (it raises
    `TerminationSignal` in the main thread and restores the handler before it afterwards), so the flow body installs
    ours again for SIGTERM (`flows/collection.py`): otherwise collection would go on until the flow ends.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    known: dict[int, str] = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "terminated (SIGTERM)"}
    names = {sig: known.get(sig, signal.Signals(sig).name) for sig in signals}
    say = announce or (lambda text: print(text, file=sys.stderr, flush=True))
    previous = {sig: signal.getsignal(sig) for sig in names}

    def handler(signum: int, _frame: Any) -> None:
        code = EXIT_CODES.get(signum, EXIT_INTERRUPTED)
        if stop.is_set():
            say(f"{names.get(signum, 'signal')} again: stopping now; {RESUME_HINT}")
            hard_exit(code)
            return
        stop.request(names.get(signum, "stopped"), code)
        say(
            f"{names.get(signum, 'stopped')}: no new rollouts; those in flight get {stop.grace_s:g} s to finish "
            f"(press Ctrl-C again to stop at once)"
        )

    for sig in names:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore

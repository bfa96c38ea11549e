"""Live counts from collector processes the flow did not start itself (local Dask and Ray workers) to its board.

A `--task-runner processes` collector reports over the pipe it was started with (rollouts.collector.pool). Dask and
Ray start their worker processes themselves, so the flow listens on a loopback socket instead
(`multiprocessing.connection`, with a random auth key) and names it in the workers' environment; a worker's runtime
then sends the change of its board's counts twice a second and as each shard ends. Without it the flow's board
moved only when a whole shard came back: `0/N` for most of a run, then a burst that read as thousands per second.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from rollouts.collector.progress import ProgressBoard, ReportedCounts

ADDRESS_ENV = "ROLLOUTS_PROGRESS_ADDRESS"
KEY_ENV = "ROLLOUTS_PROGRESS_KEY"


class ProgressListener:
    """The flow's end: adds every worker's reported change to `board`. `env()` names it for worker processes."""

    def __init__(self, board: ProgressBoard) -> None:
        self.board, self._key = board, secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=self._key)
        self._connections: list[Connection] = []
        threading.Thread(target=self._accept, name="rollouts-progress", daemon=True).start()

    def env(self) -> dict[str, str]:
        host, port = self._listener.address
        return {ADDRESS_ENV: f"{host}:{port}", KEY_ENV: self._key.hex()}

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                return
            except Exception:  # a stranger without the key (AuthenticationError): ignore it
                continue
            self._connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                delta: dict[str, Any] = conn.recv()
            except (EOFError, OSError):
                return
            self.board.add_delta(delta)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.close()


class ProgressReporter:
    """A worker's end: sends the change of `board` since the last report, every `interval_s` and on `flush()`."""

    def __init__(self, board: ProgressBoard, address: str, key: bytes, interval_s: float = 0.5) -> None:
        host, _, port = address.rpartition(":")
        self.board, self.interval_s = board, interval_s
        self._conn = Client((host, int(port)), authkey=key)
        self._reported = ReportedCounts()
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="rollouts-progress-reporter", daemon=True).start()

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval_s):
            if not self.flush():
                return

    def flush(self) -> bool:
        """Send what changed; False once the flow is gone."""
        with self._lock:
            delta = self._reported.pending(self.board.snapshot())
            if not delta:
                return True
            try:
                self._conn.send(delta)
            except (OSError, ValueError):
                return False
            self._reported.mark()
        return True


def reporter_from_env(board: ProgressBoard) -> ProgressReporter | None:
    """The reporter of a worker process whose environment names a flow's listener; None elsewhere."""
    address, key = os.environ.get(ADDRESS_ENV), os.environ.get(KEY_ENV)
    if not (address and key):
        return None
    try:
        return ProgressReporter(board, address, bytes.fromhex(key))
    except (OSError, ValueError):
        return None  # the flow that listened is gone: counts still arrive with each shard's result

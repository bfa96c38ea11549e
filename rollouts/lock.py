"""One writer per run: a lock in the run folder, taken before the run's first write and held until the flow ends.

Two commands on one run used to interleave: duplicated rollouts, a `completed` manifest counting both, and one
process deleting the other's `train/.work`. The lock file `<run>/.lock` names its holder (host, pid, since).

- Local paths: `flock` on the lock file. The kernel drops it when the holder dies, however it dies (kill -9, OOM), so
  a stale lock is never left behind and taking it over is the same atomic call as taking it.
- Object stores: a conditional create (`If-None-Match: *` through fsspec's `mode="create"`) of the lock object with a
  lease, renewed by a thread every third of the lease; an expired lease (a holder that stopped renewing) or a holder on
  this host whose process is gone is taken over. A store without conditional writes falls back to look-then-write,
  which two commands started in the same instant can both pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import IO

import psutil

from rollouts.errors import RunLockedError, StorageError
from rollouts.storage import Store, is_local

LOCK_FILE = ".lock"
LEASE_S = 60.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str
    token: str
    expires: float  # epoch seconds; object stores only (a local lock needs no lease)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}"

    def gone(self, now: float) -> bool:
        """A lease that ran out, or a holder on this host whose process no longer exists."""
        if self.expires and self.expires < now:
            return True
        return self.host == socket.gethostname() and not psutil.pid_exists(self.pid)


def _me(lease_s: float) -> Holder:
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        token=uuid.uuid4().hex,
        expires=time.time() + lease_s,
    )


def _parse(data: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None  # torn or foreign: treated as free on a local path, as expired on an object store


class RunLock:
    """The lock of one run folder; `acquire()` raises RunLockedError naming the holder when it is taken."""

    def __init__(self, store: Store, lease_s: float = LEASE_S) -> None:
        self.store, self.lease_s = store, lease_s
        self.path = store.path(LOCK_FILE)
        self.holder = _me(lease_s)
        self._fh: IO[bytes] | None = None
        self._renewer: threading.Thread | None = None
        self._stopped = threading.Event()

    def acquire(self) -> None:
        if is_local(self.store.fs):
            self._acquire_local()
        else:
            self._acquire_remote()

    def _refuse(self, holder: Holder | None) -> RunLockedError:
        who = holder.describe() if holder else "another command"
        return RunLockedError(
            f"run {self.store.root} is being written by {who} (lock {self.store.url(LOCK_FILE)}): "
            "wait for it to end, or stop it; a lock whose process is gone is taken over"
        )

    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fh = open(self.path, "a+b")  # noqa: SIM115 (held open for the lock's lifetime)
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = _parse(fh.read())
                fh.close()
                raise self._refuse(holder) from None
            # The file may have been unlinked by a releasing holder between our open and our flock: lock the new one.
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(asdict(self.holder)).encode())
        fh.flush()
        self._fh = fh

    def _acquire_remote(self) -> None:
        fs = self.store.fs
        for _ in range(3):
            try:
                self._create(exclusive=True)
                break
            except FileExistsError:
                holder = self._read()
                if holder is not None and not holder.gone(time.time()):
                    raise self._refuse(holder) from None
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(self.path)  # a dead holder's lease: taken over
        else:
            raise self._refuse(self._read())
        self._renewer = threading.Thread(target=self._renew, name="run-lock-lease", daemon=True)
        self._renewer.start()

    def _create(self, *, exclusive: bool) -> None:
        data = json.dumps(asdict(self.holder)).encode()
        fs = self.store.fs
        try:
            if not exclusive:
                fs.pipe_file(self.path, data)
                return
            try:
                fs.pipe_file(self.path, data, mode="create")
            except TypeError:  # a filesystem without conditional writes
                if fs.exists(self.path):
                    raise FileExistsError(self.path) from None
                fs.pipe_file(self.path, data)
        except FileExistsError:
            raise
        except OSError as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                raise FileExistsError(self.path) from exc
            raise StorageError(f"cannot write the run lock {self.store.url(LOCK_FILE)}: {exc}") from exc

    def _read(self) -> Holder | None:
        try:
            return _parse(self.store.fs.cat_file(self.path))
        except FileNotFoundError:
            return None

    def _renew(self) -> None:
        while not self._stopped.wait(self.lease_s / 3):
            current = self._read()
            if current is not None and current.token != self.holder.token:
                return  # taken over after our lease ran out: the other command owns the run now
            self.holder = Holder(**{**asdict(self.holder), "expires": time.time() + self.lease_s})
            with contextlib.suppress(StorageError):
                self._create(exclusive=False)

    def release(self) -> None:
        self._stopped.set()
        if self._fh is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still locked: nobody can take a lock on a file about to vanish
            self._fh.close()
            self._fh = None
            return
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
            current = self._read()
            if current is not None and current.token == self.holder.token:
                with contextlib.suppress(FileNotFoundError):
                    self.store.fs.rm(self.path)


class RunLocks:
    """The run locks this process holds, by run URL: taken by the shard stage, released when the flow ends."""

    def __init__(self) -> None:
        self._held: dict[str, RunLock] = {}
        self._lock = threading.Lock()

    def take(self, store: Store) -> None:
        lock = RunLock(store)
        with self._lock:
            if store.root in self._held:
                raise RunLockedError(f"run {store.root} is already being written by this process")
            lock.acquire()
            self._held[store.root] = lock

    def release(self, store: Store) -> None:
        with self._lock:
            lock = self._held.pop(store.root, None)
        if lock is not None:
            lock.release()

    def held(self) -> list[str]:
        return list(self._held)

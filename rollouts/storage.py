"""Storage: the run's files on a local path or any fsspec URL (s3:// through s3fs), written durably and atomically."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from rollouts.errors import ConfigError, StorageError
from rollouts.places import is_url


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return fs, path
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open storage {url!r}: {exc}") from exc


def join(base: str, *parts: str) -> str:
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


class Store:
    """One root URL plus its filesystem; every path below is relative to the root."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/") if is_url(root) else os.path.abspath(root)
        self.storage_options = storage_options or {}
        self.fs, self.base = filesystem(self.root, self.storage_options)

    def url(self, *parts: str) -> str:
        return join(self.root, *parts)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts) if not is_local(self.fs) else os.path.join(self.base, *parts)

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def read_json(self, *parts: str) -> Any | None:
        path = self.path(*parts)
        try:
            with self.fs.open(path, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {self.url(*parts)}: {exc}") from exc

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomic: readers see the old file or the new one, never a torn one."""
        path = self.path(*parts)
        try:
            if is_local(self.fs):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            else:  # one PUT is atomic on object stores
                with self.fs.open(path, "wb") as fh:
                    fh.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.url(*parts)}: {exc}") from exc

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), *parts)

    def write_lines(self, lines: Iterable[str], *parts: str) -> None:
        buf = io.StringIO()
        for line in lines:
            buf.write(line)
            buf.write("\n")
        self.write_bytes(buf.getvalue().encode(), *parts)

    def iter_lines(self, *parts: str) -> Iterator[str]:
        """Lines of a JSONL file plus any uncommitted appended parts; a torn last line is skipped."""
        for path in self._pieces(self.path(*parts)):
            try:
                with self.fs.open(path, "rb") as fh:
                    for raw in fh:
                        if raw.endswith(b"\n"):
                            yield raw.decode()
            except FileNotFoundError:
                continue

    def _pieces(self, path: str) -> list[str]:
        """The file, then its uncommitted parts in order; parts a finished fold already holds are left out."""
        pieces = [path]
        parts_dir = path + ".parts"
        if not self.fs.exists(parts_dir):
            return pieces
        parts = sorted(p for p in self.fs.ls(parts_dir, detail=False) if not p.endswith(COMMIT_MARKER))
        intent = _read_intent(self.fs, parts_dir)
        if intent is not None and _size(self.fs, path) == intent["size"]:  # folded, parts not yet deleted
            folded = set(intent["parts"])
            parts = [p for p in parts if posixpath.basename(p) not in folded]
        return pieces + parts

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        for piece in self._pieces(path):
            if self.fs.exists(piece):
                self.fs.rm(piece, recursive=True)

    def remove_leftovers(self, *folders: str) -> None:
        """Temporary files of atomic writes whose writer was killed before its rename (`<file>.tmp-*`)."""
        for folder in folders:
            for path in self.fs.glob(self.path(folder, "**", "*.tmp-*")) if self.exists(folder) else []:
                self.fs.rm(path)

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.fs.glob(self.path(pattern)))

    def appender(self, *parts: str) -> Appender:
        return Appender(self, self.path(*parts))


class Appender:
    """Appends JSONL lines as rollouts finish, flushed every `flush_every` lines and at most `flush_interval_s` after a
    line was written, so a crash loses at most about a second of finished rollouts (a count alone lost up to 511 per
    shard when rollouts finish slowly).

    Local files are appended and flushed in place (the OS keeps what was flushed through a crash of the process;
    `commit()` fsyncs). Object stores cannot append, so each flush writes a part object next to the file
    (`<file>.parts/NNNNNN.jsonl`), whole in one PUT, and `commit()` folds the parts into the file (`fold_parts`).
    Readers (`Store.iter_lines`) see committed lines and parts alike, each line once.
    The deadline is kept by a timer on the running event loop when there is one, and checked on every write anyway.
    """

    def __init__(self, store: Store, path: str, flush_every: int = 512, flush_interval_s: float = 1.0) -> None:
        self.store, self.path, self.flush_every, self.flush_interval_s = store, path, flush_every, flush_interval_s
        self.local = is_local(store.fs)
        self.buffer: list[str] = []
        self._fh = None
        self._oldest = 0.0  # monotonic time of the oldest unflushed line
        self._timer: Any = None
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._repair_torn_tail()
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across writes; closed by the writer)
        else:
            fold_parts(store, path)  # an earlier attempt killed mid-commit: finish its fold before appending

    def _repair_torn_tail(self) -> None:
        # A crash mid-write can leave a line without its newline: cut it so the next append starts clean.
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            fh.truncate(data.rfind(b"\n") + 1)

    def write(self, line: str) -> None:
        now = time.monotonic()
        if not self.buffer:
            self._oldest = now
        self.buffer.append(line)
        if len(self.buffer) >= self.flush_every or now - self._oldest >= self.flush_interval_s:
            self.flush()
        elif self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        import asyncio  # here, so the Appender stays the only part of this module that knows about event loops

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a plain script): the check on each write is the only deadline
            return
        self._timer = loop.call_later(
            max(self.flush_interval_s - (time.monotonic() - self._oldest), 0.0), self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except StorageError as exc:  # no caller to raise to here: keep the lines, the next write or commit retries
            import logging

            logging.getLogger(__name__).warning("%s", exc.message)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.buffer:
            return
        data = "".join(line + "\n" for line in self.buffer)
        try:
            if self._fh is not None:
                self._fh.write(data)
                self._fh.flush()
            else:
                part = posixpath.join(self.path + ".parts", f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl")
                with self.store.fs.open(part, "wb") as fh:
                    fh.write(data.encode())
        except OSError as exc:
            raise StorageError(f"cannot append to {self.path}: {exc}") from exc
        self.buffer.clear()

    def commit(self) -> None:
        self.flush()
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            return
        fold_parts(self.store, self.path)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


COMMIT_MARKER = "_commit.json"


def fold_parts(store: Store, path: str) -> None:
    """Fold `<file>.parts/*` into `<file>` so that a crash at any point loses and duplicates nothing.

    1. PUT `<file>.parts/_commit.json`: the parts being folded and the size the folded file will have;
    2. PUT the folded file whole (an object store replaces it atomically);
    3. delete the folded parts, then the marker.
    A reader that finds the marker trusts the file to hold those parts only if its size is the promised one (the
    fold's PUT happened); otherwise it reads the old file plus the parts. Re-running a fold finishes or redoes it.
    """
    fs = store.fs
    parts_dir = path + ".parts"
    if not fs.exists(parts_dir):
        return
    pieces = store._pieces(path)
    blobs = [_read(fs, piece) for piece in pieces]
    parts = [posixpath.basename(p) for p in pieces[1:]]
    intent = _read_intent(fs, parts_dir)
    folded_before = set(intent["parts"]) if intent is not None and _size(fs, path) == intent["size"] else set()
    leftovers = [
        p
        for p in fs.ls(parts_dir, detail=False)
        if not p.endswith(COMMIT_MARKER) and posixpath.basename(p) in folded_before
    ]
    try:
        if parts:
            data = b"".join(blobs)
            with fs.open(posixpath.join(parts_dir, COMMIT_MARKER), "wb") as fh:
                fh.write(json.dumps({"parts": parts, "size": len(data)}).encode())
            with fs.open(path, "wb") as fh:
                fh.write(data)
        for part in [posixpath.join(parts_dir, p) for p in parts] + leftovers:
            fs.rm(part)
        fs.rm(parts_dir, recursive=True)
    except FileNotFoundError:
        pass  # another attempt finished the same fold
    except OSError as exc:
        raise StorageError(f"cannot commit {path}: {exc}") from exc


def _read_intent(fs: fsspec.AbstractFileSystem, parts_dir: str) -> dict[str, Any] | None:
    try:
        with fs.open(posixpath.join(parts_dir, COMMIT_MARKER), "rb") as fh:
            intent: dict[str, Any] = json.loads(fh.read())  # written by this module as a JSON object
            return intent
    except (FileNotFoundError, ValueError):
        return None


def _size(fs: fsspec.AbstractFileSystem, path: str) -> int:
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return 0


def inventory(store: Store, folders: Iterable[str], files: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every committed file under `folders` (and of `files`), by path relative to the root:
    the manifest lists them, so a reader can tell a complete run from a half-copied one (`check_inventory`)."""
    found: dict[str, dict[str, Any]] = {}
    prefix = store.path("")
    candidates = [p for folder in folders for p in (store.fs.find(store.path(folder)) if store.exists(folder) else [])]
    candidates += [store.path(name) for name in files if store.exists(name)]
    for full in sorted(candidates):
        rel = full[len(prefix) :].lstrip("/").replace(os.sep, "/")
        if ".parts/" in rel or "/.work/" in rel or ".tmp-" in rel:
            continue
        found[rel] = _digest(store.fs, full)
    return found


def check_inventory(store: Store, files: dict[str, dict[str, Any]]) -> list[str]:
    """Files of a manifest's inventory that are missing or differ; empty when the run is whole."""
    bad = []
    for rel, expected in files.items():
        full = store.path(*rel.split("/"))
        if not store.fs.exists(full) or _digest(store.fs, full) != expected:
            bad.append(rel)
    return bad


def _digest(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest()}


def _read(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    try:
        with fs.open(path, "rb") as fh:
            data: bytes = fh.read()
            return data
    except FileNotFoundError:
        return b""


def check_place(url: str, storage_options: dict[str, Any] | None = None, *, timeout_s: float = 10.0) -> None:
    """Before a run: the output place can be reached and written under (a ConfigError of one line otherwise).

    An object store that does not answer (a dead endpoint, no network) would otherwise retry for many seconds and end
    in a traceback deep inside the first write; a bucket that does not exist would only show at that write. The
    check runs in a thread so a hung connection is cut after `timeout_s`."""
    fs, path = filesystem(url, storage_options)
    outcome: list[BaseException | str | None] = []

    def probe() -> None:
        try:
            outcome.append(_place_problem(fs, path, url))
        except BaseException as exc:  # reported on the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=probe, name="rollouts-check-place", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise ConfigError(
            f"the output place {url} did not answer within {timeout_s:g} s: check its endpoint "
            "(--storage-options) and the network"
        )
    found = outcome[0]
    if isinstance(found, BaseException):
        detail = str(found).splitlines()[0][:300] if str(found) else type(found).__name__
        raise ConfigError(f"cannot use the output place {url}: {type(found).__name__}: {detail}") from None
    if found:
        raise ConfigError(found)


def _place_problem(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str | None:
    if is_local(fs):
        parent = os.path.abspath(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            return f"cannot write under {url}: {parent} is not a writable folder"
        return None
    root = path.split("/", 1)[0]
    try:
        fs.info(root)  # raises on a store that cannot be reached or refuses the credentials (exists() says False)
    except FileNotFoundError:
        return f"{url}: the bucket {root!r} does not exist (or these credentials cannot see it)"
    return None

"""Object-store commits of appended JSONL: parts folded with an intent marker, so a crash at any step neither loses
nor duplicates a line; the manifest inventory tells a whole run from a half-copied one."""

from __future__ import annotations

import posixpath

import fsspec
import pytest

from rollouts.storage import COMMIT_MARKER, Store, check_inventory, fold_parts, inventory


@pytest.fixture()
def store() -> Store:
    # fsspec's in-memory filesystem behaves as an object store here: no append, whole-object writes.
    fsspec.filesystem("memory").store.clear()
    return Store("memory://bucket/run")


def _append(store: Store, lines: list[str], flush_every: int = 2) -> None:
    appender = store.appender("rollouts", "00000.jsonl")
    appender.flush_every = flush_every
    for line in lines:
        appender.write(line)
    appender.flush()


def test_parts_are_read_before_the_commit_and_folded_once_after(store):
    _append(store, ["a", "b", "c"])
    assert list(store.iter_lines("rollouts", "00000.jsonl")) == ["a\n", "b\n", "c\n"]
    fold_parts(store, store.path("rollouts", "00000.jsonl"))
    assert list(store.iter_lines("rollouts", "00000.jsonl")) == ["a\n", "b\n", "c\n"]
    assert not store.fs.exists(store.path("rollouts", "00000.jsonl.parts"))


def test_a_crash_after_the_folded_put_neither_duplicates_nor_loses(store):
    path = store.path("rollouts", "00000.jsonl")
    _append(store, ["a", "b"])
    fold_parts(store, path)
    _append(store, ["c", "d", "e"])
    parts = sorted(p for p in store.fs.ls(path + ".parts", detail=False))
    # The fold's first two steps, then a crash: the marker and the new file are there, the parts too.
    data = b"a\nb\nc\nd\ne\n"
    with store.fs.open(posixpath.join(path + ".parts", COMMIT_MARKER), "wb") as fh:
        fh.write(
            f'{{"parts": {[posixpath.basename(p) for p in parts]}, "size": {len(data)}}}'.replace("'", '"').encode()
        )
    with store.fs.open(path, "wb") as fh:
        fh.write(data)
    assert list(store.iter_lines("rollouts", "00000.jsonl")) == ["a\n", "b\n", "c\n", "d\n", "e\n"]
    _append(store, ["f"], flush_every=1)  # a resumed attempt finishes the fold before it appends
    assert list(store.iter_lines("rollouts", "00000.jsonl")) == ["a\n", "b\n", "c\n", "d\n", "e\n", "f\n"]


def test_a_crash_before_the_folded_put_keeps_the_parts(store):
    path = store.path("rollouts", "00000.jsonl")
    _append(store, ["a", "b"])
    fold_parts(store, path)
    _append(store, ["c"], flush_every=1)
    parts = [posixpath.basename(p) for p in store.fs.ls(path + ".parts", detail=False)]
    with store.fs.open(posixpath.join(path + ".parts", COMMIT_MARKER), "wb") as fh:
        fh.write(f'{{"parts": ["{parts[0]}"], "size": 6}}'.encode())  # the PUT of the folded file never happened
    assert list(store.iter_lines("rollouts", "00000.jsonl")) == ["a\n", "b\n", "c\n"]
    fold_parts(store, path)
    assert store.fs.cat(path) == b"a\nb\nc\n"


def test_inventory_lists_sizes_and_checksums_and_spots_a_changed_file(store):
    store.write_lines(["x", "y"], "rollouts", "00000.jsonl")
    store.write_lines(["z"], "rejects.jsonl")
    _append(store, ["uncommitted"])  # parts are not part of a committed run
    files = inventory(store, ["rollouts"], ["rejects.jsonl"])
    assert files == {
        "rejects.jsonl": {"size": 2, "sha256": files["rejects.jsonl"]["sha256"]},
        "rollouts/00000.jsonl": {"size": 4, "sha256": files["rollouts/00000.jsonl"]["sha256"]},
    }
    assert check_inventory(store, files) == []
    store.write_lines(["x"], "rollouts", "00000.jsonl")
    assert check_inventory(store, files) == ["rollouts/00000.jsonl"]

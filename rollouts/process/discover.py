"""Expand inputs (run directories, NeMo Gym output folders, files, globs) into files, each with its role and source.

- A run directory (`manifest.json` or `rollouts/`) is one source: its `rollouts/*.jsonl` and `failures/*.jsonl`.
- A NeMo Gym output folder (a directory of `*.jsonl` without a manifest), and any `<stem>*.jsonl` file given by
  name or glob: `<stem>.jsonl` and `<stem>_failures.jsonl` are rollouts of the source `<stem>`;
  `<stem>_materialized_inputs.jsonl` is that source's inputs (role `inputs`).
- Any other file is its own source, named after the file without its extensions.
Source names are portable (`portable_names`): the path relative to the deepest folder that holds every source (just
the name when there is one source), so the same data read on another machine gives the same group and rollout ids.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace
from typing import Any, Literal

import fsspec

from ..errors import InputError, StorageError
from ..places import without_scheme
from ..storage import filesystem

SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")  # not in-progress files such as shard.jsonl.tmp
FAILURES = "_failures"
MATERIALIZED = "_materialized_inputs"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    url: str  # what the user sees in messages
    path: str  # path for `fs`
    source: str  # portable source name (see portable_names)
    parquet: bool
    fs: fsspec.AbstractFileSystem
    role: Literal["rollouts", "inputs"] = "rollouts"


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return path if "file" in protocols or "local" in protocols else fs.unstrip_protocol(path)


def discover(inputs: list[str], storage_options: dict[str, Any] | None = None) -> list[InputFile]:
    """Every input file with its role and (portable) source; a file named twice is read once."""
    if not inputs:
        raise InputError("no input given")
    found: list[InputFile] = []
    for url in inputs:
        try:
            fs, path = filesystem(url, storage_options)
            paths = sorted(fs.glob(path)) if _GLOB_CHARS & set(path) else [path]
            if not paths:
                raise InputError(f"{url}: no file matches this pattern")
            for p in paths:
                found.extend(_expand(fs, p, url))
        except (OSError, ValueError) as exc:
            raise StorageError(f"{url}: cannot list input ({exc})") from exc
    unique = list({(f.fs.protocol, f.path): f for f in found}.values())
    names = portable_names([f.source for f in unique])
    return [replace(f, source=names[f.source]) for f in unique]


def _stem(path: str) -> tuple[str, Literal["rollouts", "inputs"]]:
    """`dir/x_failures.jsonl.gz` -> (`dir/x`, rollouts); `dir/x_materialized_inputs.jsonl` -> (`dir/x`, inputs)."""
    base = path
    for suffix in (*SHARD_SUFFIXES, ".parquet", ".ndjson", ".json"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith(MATERIALIZED):
        return base[: -len(MATERIALIZED)], "inputs"
    if base.endswith(FAILURES):
        return base[: -len(FAILURES)], "rollouts"
    return base, "rollouts"


def _expand(fs: fsspec.AbstractFileSystem, path: str, url: str) -> list[InputFile]:
    if fs.isdir(path):
        root = path.rstrip("/")
        if fs.exists(f"{root}/manifest.json") or fs.isdir(f"{root}/rollouts"):
            source = display(fs, root)
            shards = [
                p
                for sub in ("rollouts", "failures")
                for p in sorted(fs.glob(f"{root}/{sub}/*.jsonl*"))
                if p.endswith(SHARD_SUFFIXES)
            ]
            return [InputFile(display(fs, p), p, source, False, fs) for p in shards]
        files = [p for p in sorted(fs.glob(f"{root}/*.jsonl*")) if p.endswith(SHARD_SUFFIXES)]
        if not files:
            raise InputError(
                f"{url}: a directory but neither a run (no manifest.json or rollouts/) "
                "nor a NeMo Gym output folder (no *.jsonl)"
            )
        return [_file(fs, p) for p in files]
    if not fs.exists(path):
        raise InputError(f"{url}: no such file or directory")
    return [_file(fs, path)]


def _file(fs: fsspec.AbstractFileSystem, path: str) -> InputFile:
    stem, role = _stem(path)
    return InputFile(display(fs, path), path, display(fs, stem), path.endswith(".parquet"), fs, role)


def _parts(name: str) -> list[str]:
    name = without_scheme(name)
    return [p for p in posixpath.normpath(name.replace("\\", "/")).split("/") if p not in ("", ".")]


def portable_names(sources: list[str]) -> dict[str, str]:
    """Each source relative to the deepest folder that holds them all (one source: its last path component)."""
    distinct = list(dict.fromkeys(sources))
    split = {s: _parts(s) or [s] for s in distinct}
    if len(distinct) == 1:
        return {distinct[0]: split[distinct[0]][-1]}
    common = 0
    shortest = min(len(p) for p in split.values())
    while common < shortest - 1 and len({tuple(p[: common + 1]) for p in split.values()}) == 1:
        common += 1
    return {s: "/".join(p[common:]) for s, p in split.items()}

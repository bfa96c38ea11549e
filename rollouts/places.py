"""Places: whether a path names an fsspec URL (`s3://bucket/runs`, `memory://x`) or a local path, and its absolute form.

The one home of the rule: storage, the shard stage, the CLI, the readers of existing runs and the secret checks
all ask here, so a place is never a URL to one of them and a path to another.
"""

from __future__ import annotations

import os


def is_url(place: str) -> bool:
    """Whether `place` is a URL with a scheme (`s3://`, `gs://`, `memory://`, `file://`), not a local path."""
    return "://" in place


def absolute(place: str) -> str:
    """A URL as it is; a local path absolute, `~` expanded."""
    return place if is_url(place) else os.path.abspath(os.path.expanduser(place))


def without_scheme(place: str) -> str:
    """The part of a URL after its scheme (`s3://bucket/x` -> `bucket/x`); a local path as it is."""
    return place.split("://", 1)[1] if is_url(place) else place


def http_url(value: str, option: str) -> str:
    """An http(s) base URL without its trailing `/`; a ValueError naming `option` for anything else."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{option} must start with http:// or https:// (got {value!r})")
    return value.rstrip("/")

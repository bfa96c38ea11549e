"""Polars' allocator (its bundled jemalloc), set per kind of process before polars loads: one place for both policies.

Polars configures jemalloc on import to hand freed pages back within about a second
(`dirty_decay_ms:500,muzzy_decay_ms:1000` in polars/__init__.py, which appends any `_RJEM_MALLOC_CONF` already set;
jemalloc reads its options once, when polars' library loads). So each setting here must run before anything imports
polars, and a `_RJEM_MALLOC_CONF` of the user's own is always kept.

- A collection run's process returns freed pages at once (`release_freed_memory_at_once`, flows/collection.py). The
  final stages (profile, filter, format) each read the whole run in one long-lived process whose generation already
  holds Prefect's state of every task run, so pages one stage freed were still held when the next peaked. On a
  1M-rollout run, each stage in its own process: profile 705 -> 525 MB, filter + format 771 -> 486 MB, for
  13.3 -> 16.2 s and 60.5 -> 74.0 s (~1 % of that run's wall time).
- `rollouts check` keeps freed pages for 30 s (`keep_freed_pages`, commands.main). It streams the run in 24 MB chunks,
  and each chunk faulted back in the pages the previous one had just freed: over a third of its CPU time (11.4 CPU-s
  per 100k rollouts, 4.2 of them in the kernel, against 8.0 and 1.6 with pages kept), for a peak RSS of ~0.75 GB
  instead of ~0.5 GB at 100k (bench/quality_checks.py, docs/quality.md).
- `rollouts process`, a short process of its own, keeps polars' default.
"""

from __future__ import annotations

import os
import sys

ENV = "_RJEM_MALLOC_CONF"  # the variable polars' bundled jemalloc reads its options from
RELEASE_AT_ONCE = "dirty_decay_ms:0,muzzy_decay_ms:0"
KEEP_FREED_PAGES = "dirty_decay_ms:30000,muzzy_decay_ms:30000"


def _configure(options: str) -> bool:
    """Set polars' allocator options; False (nothing changed) when polars is loaded already or the environment has a
    setting of its own."""
    if "polars" in sys.modules or os.environ.get(ENV):
        return False
    os.environ[ENV] = options
    return True


def release_freed_memory_at_once() -> bool:
    """A collection run's process: freed pages go back to the system at once."""
    return _configure(RELEASE_AT_ONCE)


def keep_freed_pages() -> bool:
    """A process streaming a large file chunk by chunk (`rollouts check`): freed pages are kept for reuse."""
    return _configure(KEEP_FREED_PAGES)

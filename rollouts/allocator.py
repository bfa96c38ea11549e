"""Polars' allocator setting for batch work that streams a large file chunk by chunk (`rollouts check`).

Polars allocates with jemalloc and, on import, configures it to hand freed pages back to the kernel within a second
(`dirty_decay_ms:500,muzzy_decay_ms:1000` in polars/__init__.py, which appends any `_RJEM_MALLOC_CONF` already set;
the later option wins). Each chunk then faults back in the pages the previous one freed. On the health checks
(32 MB chunks of 3.8 KB rollouts) that page-fault work was over a third of the CPU time: 11.4 CPU-s per 100k
rollouts (4.2 of them in the kernel) against 8.0 (1.6 in the kernel) when freed pages are kept for 30 s, for a peak
RSS of ~0.75 GB instead of ~0.5 GB (bench/quality_checks.py, docs/quality.md). jemalloc reads its options once,
when polars is loaded, so this must run before anything imports polars; an `_RJEM_MALLOC_CONF` already in the
environment is left as it is. Only `rollouts check` does it (commands.main, before polars loads): elsewhere polars'
default stands.
"""

from __future__ import annotations

import os
import sys

ENV = "_RJEM_MALLOC_CONF"
KEEP_FREED_PAGES = "dirty_decay_ms:30000,muzzy_decay_ms:30000"


def keep_freed_pages() -> bool:
    """Ask polars' allocator to keep freed pages for reuse (see the module docstring); True when it will apply
    (polars not loaded yet), False when polars is already loaded and keeps the options it started with."""
    if "polars" in sys.modules:
        return False
    os.environ.setdefault(ENV, KEEP_FREED_PAGES)
    return True

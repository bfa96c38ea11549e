"""A collection run's process gives the memory polars frees back to the system at once.

polars allocates through its own jemalloc, which by default keeps freed pages for ~10 s to reuse them. The final
stages of a run (profile, filter, format) each read the whole run in one long-lived process, whose generation
already holds Prefect's state of every task run, so the pages one stage freed were still held when the next one
peaked. Measured on a 1M-rollout run, each stage in its own process: the profile stage peaked at 705 MB with the
default and 525 MB with `dirty_decay_ms:0,muzzy_decay_ms:0`, filter + format at 771 and 486 MB; they took 13.3 ->
16.2 s and 60.5 -> 74.0 s (~1 % of that run's wall time). `rollouts process`, a short process on its own, keeps
jemalloc's default: there speed is what counts.

jemalloc reads the option once, when polars' library loads, so this must run before the first `import polars`.
"""

from __future__ import annotations

import os
import sys

JEMALLOC_CONF = "_RJEM_MALLOC_CONF"  # the variable polars' bundled jemalloc reads its options from
RELEASE_AT_ONCE = "dirty_decay_ms:0,muzzy_decay_ms:0"


def release_freed_memory_at_once() -> bool:
    """Set polars' allocator to return freed pages at once; False when polars is loaded already or the environment
    has a setting of its own (which is kept)."""
    if "polars" in sys.modules or os.environ.get(JEMALLOC_CONF):
        return False
    os.environ[JEMALLOC_CONF] = RELEASE_AT_ONCE
    return True

"""A collection run's process has polars' allocator return freed memory at once (rollouts/allocator.py), set
before polars loads; a setting of the user's own is kept; other processes keep polars' default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rollouts.allocator import ENV as JEMALLOC_CONF
from rollouts.allocator import RELEASE_AT_ONCE, release_freed_memory_at_once

ROOT = Path(__file__).resolve().parents[2]
SHOW = "import {module}, os, sys; print(os.environ.get('{var}', ''))"


def _conf_after_import(module: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SHOW.format(module=module, var=JEMALLOC_CONF)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


def test_the_flow_module_sets_it_before_polars_loads_and_keeps_a_users_own():
    clean = {k: v for k, v in os.environ.items() if k != JEMALLOC_CONF}
    # polars puts its own defaults first; jemalloc takes the last value of an option, so ours win
    assert _conf_after_import("flows.collect", clean).endswith(RELEASE_AT_ONCE)
    assert _conf_after_import("flows.collect", {**clean, JEMALLOC_CONF: "narenas:2"}).endswith("narenas:2")
    assert RELEASE_AT_ONCE not in _conf_after_import(
        "rollouts.training.api", clean
    )  # `rollouts process` keeps the default


def test_too_late_once_polars_is_loaded():
    import polars  # noqa: F401

    assert not release_freed_memory_at_once()

"""`rollouts check` asks polars' allocator to keep freed pages (rollouts.allocator), which only works before polars
is loaded: checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rollouts.allocator import ENV, KEEP_FREED_PAGES

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=clean, check=True, timeout=120
    )
    return done.stdout.strip()


def test_the_setting_applies_only_before_polars_is_loaded_and_never_overrides_the_user() -> None:
    before = "from rollouts.allocator import keep_freed_pages as k; import os; print(k(), os.environ.get('{env}'))"
    assert _python(before.format(env=ENV)) == f"True {KEEP_FREED_PAGES}"
    after = _python("import polars; " + before.format(env=ENV))  # polars wrote its own default, without ours
    assert after.startswith("False ") and KEEP_FREED_PAGES not in after
    assert _python(before.format(env=ENV), **{ENV: "narenas:1"}) == "False narenas:1"  # the user's own is kept


def test_rollouts_check_sets_it_before_polars_loads_and_other_commands_do_not() -> None:
    code = (
        "import os, sys, commands\n"
        "try:\n"
        "    code = commands.main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "import polars\n"  # the command's work loads it; its --help no longer does
        "print(code, os.environ.get('{env}'))"
    )
    out = _python(code.format(argv=["check", "--help"], env=ENV)).splitlines()[-1]
    assert out.startswith("0 ") and out.endswith(f",{KEEP_FREED_PAGES}")  # after polars' default: ours wins
    out = _python(code.format(argv=["process", "--help"], env=ENV)).splitlines()[-1]
    assert out.startswith("0 ") and KEEP_FREED_PAGES not in out

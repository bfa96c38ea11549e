"""The real `rollouts` command in a subprocess: a runner that also records which modules it imported (the servers are
tests/conftest.py's)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_IMPORT_TIME = "import time:"


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float
    imported: frozenset[str]

    @property
    def fast(self) -> bool:
        """The command ended before Prefect was even imported: its own checks only, no flow, no server. (A property of
        the path taken, not of the clock, which a busy machine stretches.)"""
        return "prefect" not in self.imported

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def rollouts(
    *args: str, api_url: str | None = None, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Result:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if api_url:
        full["PREFECT_API_URL"] = api_url
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "commands", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    err_lines, imported = [], set()
    for line in done.stderr.splitlines(keepends=True):
        if line.startswith(_IMPORT_TIME):  # "import time: self | cumulative | <indent>name"
            imported.add(line.rsplit("|", 1)[1].strip())
        else:
            err_lines.append(line)
    return Result(done.returncode, done.stdout, "".join(err_lines), seconds, frozenset(imported))

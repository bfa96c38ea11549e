"""The real `rollouts` command in a subprocess: a runner that times it (the servers are tests/conftest.py's)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A fast exit is one taken before Prefect starts: the command's imports and checks only. On 2 busy cores that is
# ~1-3 s; a run through a flow takes 8 s or more there, even on a warm server.
FAST_S = 6.0


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def fast(self) -> bool:
        return self.seconds < FAST_S

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
        [sys.executable, "-m", "commands", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

"""CPU inside a time window: a sampler thread records the process's (and its worker children's) CPU seconds.

The steady window of a benchmark (first request to last response) is only known once the run is over, so the
sampler records `(wall clock, CPU seconds)` every `interval_s` from before the run to after it, and `cpu_between`
interpolates the CPU at the window's two edges. Start-up and shutdown fall outside the window and are not counted.

CPU is split by role: `collector` is this process plus its multiprocessing workers (`--task-runner processes`
spawns them; each runs a collector loop), `api` is the Prefect API server subprocess (uvicorn), whose work per
task run is part of the flow's cost but not of the collector loop's.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from pathlib import Path

import psutil


def _role(proc: psutil.Process) -> str | None:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "spawn_main" in cmdline or "forkserver" in cmdline:
        return "collector"
    if "uvicorn" in cmdline:
        return "api"
    return None


class CpuSampler:
    """Start before the measured work, stop after it; then ask for the CPU between two wall-clock times."""

    def __init__(self, interval_s: float = 0.02, children: bool = False) -> None:
        self.interval_s, self.children = interval_s, children
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), collector CPU s, API server CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._me = psutil.Process(os.getpid())
        self._kids: dict[int, tuple[psutil.Process, str]] = {}
        self._gone: dict[str, float] = {"collector": 0.0, "api": 0.0}  # CPU of children that exited
        self._last: dict[int, float] = {}

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _scan(self) -> None:
        for child in self._me.children(recursive=True):
            if child.pid not in self._kids:
                role = _role(child)
                if role is not None:
                    self._kids[child.pid] = (child, role)

    def _sample(self) -> tuple[float, float, float]:
        now = time.time()
        totals = {"collector": time.process_time(), "api": 0.0}
        for pid, (proc, role) in list(self._kids.items()):
            try:
                times = proc.cpu_times()
                self._last[pid] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess):  # exited: its last reading stays counted
                self._gone[role] += self._last.pop(pid, 0.0)
                del self._kids[pid]
                continue
            totals[role] += self._last[pid]
        return now, totals["collector"] + self._gone["collector"], totals["api"] + self._gone["api"]

    def _run(self) -> None:
        # Walking /proc for children costs milliseconds on a busy machine: look often at first (worker processes
        # start with the flow), then ever more rarely.
        next_scan, gap = 0.0, 0.25
        while True:
            if self.children and time.monotonic() >= next_scan:
                self._scan()
                next_scan, gap = time.monotonic() + gap, min(gap * 2, 8.0)
            self.samples.append(self._sample())
            if self._stop.wait(self.interval_s):
                self.samples.append(self._sample())
                return

    def _at(self, when: float, column: int) -> float:
        times = [s[0] for s in self.samples]
        i = bisect.bisect_left(times, when)
        if i <= 0:
            return self.samples[0][column]
        if i >= len(self.samples):
            return self.samples[-1][column]
        (t0, *a), (t1, *b) = self.samples[i - 1], self.samples[i]
        share = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        return a[column - 1] + share * (b[column - 1] - a[column - 1])

    def cpu_between(self, start: float, end: float) -> tuple[float, float]:
        """(collector CPU s, API server CPU s) between two `time.time()` instants."""
        return (self._at(end, 1) - self._at(start, 1), self._at(end, 2) - self._at(start, 2))


def yardstick(loops: int = 3) -> float:
    """Milliseconds for a fixed pure-Python workload (the best of `loops`): how fast this machine's core is now."""
    best = float("inf")
    for _ in range(loops):
        started = time.perf_counter()
        table: dict[int, int] = {}
        total = 0
        for i in range(1_000_000):
            total += i * i % 7
            table[i & 1023] = total
        best = min(best, time.perf_counter() - started)
    return best * 1000


def rollout_window(run_url: str) -> tuple[float, float]:
    """(first start, last finish) of a run's stored rollouts, from their `timings`: the window the CPU is read over."""
    first, last = float("inf"), 0.0
    for file in (Path(run_url) / "rollouts").glob("*.jsonl"):
        for line in file.open():
            timings = json.loads(line)["timings"]
            first, last = min(first, timings["started_at"]), max(last, timings["finished_at"])
    return first, last

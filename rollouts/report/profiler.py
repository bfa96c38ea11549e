"""`--profile`: a function-level profile (yappi, coroutine-aware) with wall and CPU time per function.

yappi measures one clock per session (sumerc/yappi#189), so the profiler alternates: it runs on the wall clock for
`slice_s`, then on the CPU clock for `slice_s`, and so on, adding each slice's stats to that clock's table. Each
clock therefore sees about half of the profiled time, the same half in kind, so the two `ttot` columns of a function
compare directly; a call still running when the clock switches counts on the new clock with only its time since the
switch, so slices (2 s) should be long next to the calls of interest. yappi costs ~0.7 us per Python call on the
wall clock and ~2 us on the CPU clock (measured here); `duty` < 1 pauses the profiler between rounds (on for a wall
and a CPU slice, then off) so a long run pays only that fraction. With `--profile` off none of this is imported.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rollouts.errors import ConfigError
from rollouts.storage import Store

CLOCKS = ("wall", "cpu")
COLUMNS = [
    "function",
    "module",
    "line",
    *(f"{clock}_{c}" for clock in CLOCKS for c in ("ncall", "tsub", "ttot", "tavg")),
]
TOP_ROWS = 25


@dataclass
class FunctionStats:
    """Per function (module, line, name): ncall, tsub and ttot in seconds, per clock; seconds each clock ran."""

    rows: dict[tuple[str, int, str], dict[str, float]] = field(default_factory=dict)
    clock_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLOCKS, 0.0))

    def add(self, clock: str, module: str, line: int, name: str, ncall: int, tsub: float, ttot: float) -> None:
        row = self.rows.setdefault((module, line, name), {})
        row[f"{clock}_ncall"] = row.get(f"{clock}_ncall", 0) + ncall
        row[f"{clock}_tsub"] = row.get(f"{clock}_tsub", 0.0) + tsub
        row[f"{clock}_ttot"] = row.get(f"{clock}_ttot", 0.0) + ttot

    def merge(self, other: FunctionStats) -> None:
        for (module, line, name), row in other.rows.items():
            for clock in CLOCKS:
                if f"{clock}_ncall" in row:
                    self.add(
                        clock,
                        module,
                        line,
                        name,
                        int(row[f"{clock}_ncall"]),
                        row[f"{clock}_tsub"],
                        row[f"{clock}_ttot"],
                    )
        for clock in CLOCKS:
            self.clock_seconds[clock] += other.clock_seconds.get(clock, 0.0)

    def table(self) -> list[dict[str, Any]]:
        """One dict per function, sorted by total wall time (then CPU time), with tavg = ttot / ncall per clock."""
        out = []
        for (module, line, name), row in self.rows.items():
            record: dict[str, Any] = {"function": name, "module": short_module(module), "line": line}
            for clock in CLOCKS:
                ncall = int(row.get(f"{clock}_ncall", 0))
                ttot = row.get(f"{clock}_ttot", 0.0)
                record.update(
                    {
                        f"{clock}_ncall": ncall,
                        f"{clock}_tsub": round(row.get(f"{clock}_tsub", 0.0), 6),
                        f"{clock}_ttot": round(ttot, 6),
                        f"{clock}_tavg": round(ttot / ncall, 9) if ncall else 0.0,
                    }
                )
            out.append(record)
        out.sort(key=lambda r: (-r["wall_ttot"], -r["cpu_ttot"], r["module"], r["line"]))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"clock_seconds": self.clock_seconds, "rows": [[m, ln, n, r] for (m, ln, n), r in self.rows.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionStats:
        stats = cls(clock_seconds=dict(data.get("clock_seconds") or {}))
        for module, line, name, row in data.get("rows", []):
            stats.rows[(module, int(line), name)] = dict(row)
        return stats


class FunctionProfiler:
    """Start/stop (or `with`) around generation and verification; every thread of the process is profiled."""

    def __init__(self, slice_s: float = 2.0, builtins: bool = False, duty: float = 1.0) -> None:
        if slice_s <= 0 or not 0 < duty <= 1:
            raise ConfigError(f"profile slice must be positive and duty in (0, 1] (got {slice_s}, {duty})")
        self.slice_s, self.builtins, self.duty = slice_s, builtins, duty
        self.stats = FunctionStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock = CLOCKS[0]
        self._since = 0.0
        self._lock = threading.Lock()

    def start(self) -> FunctionProfiler:
        import yappi

        if yappi.is_running():
            raise ConfigError("another profile is already running in this process (yappi is process-wide)")
        with self._lock:
            self._begin(CLOCKS[0])
        self._thread = threading.Thread(target=self._alternate, name="rollouts-profiler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> FunctionStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._end()
        return self.stats

    def __enter__(self) -> FunctionProfiler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _begin(self, clock: str) -> None:
        import yappi

        yappi.clear_stats()
        yappi.set_clock_type(clock)
        self._clock, self._since = clock, time.perf_counter()
        yappi.start(builtins=self.builtins, profile_threads=True)

    def _end(self) -> None:
        import yappi

        if not yappi.is_running():
            return
        yappi.stop()
        self.stats.clock_seconds[self._clock] += time.perf_counter() - self._since
        for stat in yappi.get_func_stats():
            self.stats.add(self._clock, stat.module, stat.lineno, stat.name, stat.ncall, stat.tsub, stat.ttot)
        yappi.clear_stats()

    def _alternate(self) -> None:
        pause = len(CLOCKS) * self.slice_s * (1 / self.duty - 1)
        while not self._stop.wait(self.slice_s):
            with self._lock:
                if self._stop.is_set():
                    return
                following = CLOCKS[(CLOCKS.index(self._clock) + 1) % len(CLOCKS)]
                self._end()
                if following != CLOCKS[0] or not pause:
                    self._begin(following)
                    continue
            if self._stop.wait(pause):  # a round done: off until the next one
                return
            with self._lock:
                self._begin(following)


def short_module(path: str) -> str:
    """A file path as a reader finds it: below site-packages or the standard library, else below the working dir."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    stdlib = os.path.dirname(os.__file__) + os.sep
    if path.startswith(stdlib):
        return path[len(stdlib) :]
    cwd = os.getcwd() + os.sep
    return path[len(cwd) :] if path.startswith(cwd) else path


@contextlib.contextmanager
def function_profile(enabled: bool, store: Store | None = None, **options: Any) -> Iterator[FunctionProfiler | None]:
    """`with function_profile(config.profile, store):` around generation+verification; nothing at all when off.

    With a store, the stats are written to `profile/functions/<host>-<pid>-<id>.json` on exit, where the profile
    stage merges every part (one per process, or per call) into `profile/functions.csv`. yappi is process-wide:
    one profile at a time per process.
    """
    if not enabled:
        yield None
        return
    profiler = FunctionProfiler(**options).start()
    try:
        yield profiler
    finally:
        stats = profiler.stop()
        if store is not None:
            write_function_stats(store, stats)


def write_function_stats(store: Store, stats: FunctionStats, part: str | None = None) -> str:
    import json

    # Unique per call: a process may profile several times (one part each), never overwriting an earlier part.
    name = f"{part or f'{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}'}.json"
    store.write_bytes(json.dumps(stats.to_json()).encode(), "profile", "functions", name)
    return store.url("profile", "functions", name)


def read_function_stats(store: Store) -> tuple[FunctionStats, int] | None:
    """Every process's part merged, and how many parts there were; None when the run was not profiled."""
    import json

    parts = [path for path in store.glob("profile/functions/*.json")]
    if not parts:
        return None
    merged = FunctionStats()
    for path in parts:
        with store.fs.open(path, "rb") as fh:
            merged.merge(FunctionStats.from_json(json.loads(fh.read())))
    return merged, len(parts)

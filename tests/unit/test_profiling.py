"""`--profile`: yappi's wall and CPU tables per function, merged across processes, nothing at all when off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rollouts.errors import ConfigError
from rollouts.report.profiler import (
    FunctionProfiler,
    FunctionStats,
    function_profile,
    read_function_stats,
    write_function_stats,
)
from rollouts.storage import Store


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def wait_then_spin() -> None:
    await asyncio.sleep(0.02)
    spin(5_000)


async def workload() -> None:
    for _ in range(12):
        await asyncio.gather(*(wait_then_spin() for _ in range(5)))


def by_name(stats: FunctionStats) -> dict[str, dict]:
    return {row["function"]: row for row in stats.table()}


def test_wall_clock_sees_the_awaits_and_cpu_clock_does_not() -> None:
    profiler = FunctionProfiler(slice_s=0.05)
    with profiler:
        asyncio.run(workload())
    rows = by_name(profiler.stats)
    waiting, spinning = rows["wait_then_spin"], rows["spin"]
    assert waiting["wall_ncall"] > 0 and waiting["cpu_ncall"] > 0  # both clocks took turns
    # The 20 ms sleep is inside the coroutine's wall time. Calls cut by a clock switch count only their last part,
    # and a busy machine makes more switches (9 ms was seen at load 8), so the bound is a fifth of the sleep: still
    # over ten times the ~0.3 ms of CPU its spin takes.
    assert waiting["wall_tavg"] > 0.004
    assert waiting["cpu_tavg"] < waiting["wall_tavg"] / 2  # and not inside its CPU time
    assert spinning["cpu_ttot"] > 0 and spinning["wall_tsub"] > 0
    assert set(profiler.stats.clock_seconds) == {"wall", "cpu"} and all(
        v > 0 for v in profiler.stats.clock_seconds.values()
    )
    table = profiler.stats.table()
    assert [r["wall_ttot"] for r in table] == sorted((r["wall_ttot"] for r in table), reverse=True)
    assert rows["sleep"]["module"] == "asyncio/tasks.py"  # standard library paths are shortened


def test_stats_merge_across_processes_through_the_store(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    one, two = FunctionStats(), FunctionStats()
    one.add("wall", "m.py", 3, "f", 2, 0.5, 1.0)
    one.clock_seconds.update(wall=1.0, cpu=1.0)
    two.add("wall", "m.py", 3, "f", 3, 0.5, 2.0)
    two.add("cpu", "m.py", 3, "f", 4, 0.2, 0.4)
    two.clock_seconds.update(wall=2.0, cpu=2.0)
    write_function_stats(store, one, part="a")
    write_function_stats(store, two, part="b")
    merged, parts = read_function_stats(store)
    (row,) = merged.table()
    assert parts == 2 and merged.clock_seconds == {"wall": 3.0, "cpu": 3.0}
    assert (row["wall_ncall"], row["wall_ttot"], row["wall_tavg"]) == (5, 3.0, 0.6)
    assert (row["cpu_ncall"], row["cpu_ttot"], row["cpu_tavg"]) == (4, 0.4, 0.1)
    assert read_function_stats(Store(str(tmp_path / "none"))) is None


def test_one_profile_at_a_time_and_a_written_part(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    with function_profile(True, store, slice_s=0.05) as profiler:
        assert profiler is not None
        with pytest.raises(ConfigError, match="already running"):
            FunctionProfiler().start()
        spin(1000)
    assert read_function_stats(store)[1] == 1
    with pytest.raises(ConfigError):
        FunctionProfiler(slice_s=0)


def test_duty_below_one_pauses_the_profiler_between_rounds() -> None:
    import time

    import yappi

    seen = set()
    with FunctionProfiler(slice_s=0.02, duty=0.25) as profiler:
        started = time.monotonic()  # 0.6 s: several rounds of 0.16 s; longer on a busy machine, until both are seen
        while time.monotonic() - started < 0.6 or (seen != {True, False} and time.monotonic() - started < 30):
            seen.add(yappi.is_running())
            time.sleep(0.005)
    assert seen == {True, False}  # on for a wall and a CPU slice, then off
    assert profiler.stats.clock_seconds["cpu"] > 0 and not yappi.is_running()

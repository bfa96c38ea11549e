"""`--parallel auto` on server shapes the recorded sweeps do not have, in virtual time (rollouts/tune/virtual.py):
the real controller, limiter and retry policy against the simulated server's load model, deterministic and fast."""

from __future__ import annotations

import pytest

from rollouts.config import ConcurrencyConfig
from rollouts.sim.server import SimConfig
from rollouts.tune.aimd import ControllerConfig
from rollouts.tune.virtual import compare, converged_at, run


@pytest.mark.parametrize(
    ("server", "parallel", "rate"),
    [
        (SimConfig(latency_ms=100, capacity=48, capacity_exponent=1.5), 48, 480.0),  # at the knee: 48 / 0.1 s
        (SimConfig(latency_ms=100, capacity=48, capacity_exponent=1.5), 96, 480.0 / 2**0.5),  # 0.1 x 2^1.5 s each
        (SimConfig(latency_ms=200, latency_per_request_ms=2), 300, 300 / 0.8),
        (SimConfig(latency_ms=100, rate_limit_rps=200, retry_after_s=1), 100, 200.0),  # 1,000/s asked, 200 let in
    ],
)
def test_fixed_runs_in_virtual_time_make_the_load_models_rate(server: SimConfig, parallel: int, rate: float) -> None:
    result = run(server, 6000, fixed=parallel)
    assert len(result.done) + result.failed == 6000 and result.trace == []
    assert result.rate == pytest.approx(rate, rel=0.05)


def test_convergence_is_the_first_rolling_window_at_nine_tenths_of_the_target() -> None:
    done = [i / 10 for i in range(100)] + [10 + i / 100 for i in range(1000)]  # 10/s for 10 s, then 100/s
    assert converged_at(done, 100.0, 20.0) == 14.5
    assert converged_at(done, 1000.0, 20.0) is None
    assert converged_at([0.05, 0.15, 0.25], 10.0, 0.3) == 0.3  # shorter than the window: the whole run


# ----- the controller on the three shapes, as `rollouts collect --parallel auto` runs it by default -------------------

AUTO = ControllerConfig(min_parallel=8, max_parallel=1024, initial=ConcurrencyConfig(parallel="auto").initial_parallel)


@pytest.mark.parametrize(
    ("server", "knee", "best_fixed", "floor"),
    [
        # GPU-like: throughput peaks at 48 in flight and falls beyond (main's controller: 0.59)
        (SimConfig(latency_ms=100, capacity=48, capacity_exponent=1.5), 48, 48, 0.83),
        # a hard 200 requests/s limit answered 429 + Retry-After: 2 (main: 0.86)
        (SimConfig(latency_ms=300, rate_limit_rps=200, retry_after_s=2), 60, 60, 0.95),
        # latency linear in load: more in flight is always a little faster, best fixed at --max-parallel (main: 0.47)
        (SimConfig(latency_ms=200, latency_per_request_ms=2), 512, 1024, 0.65),
    ],
    ids=["gpu-48", "rate-limit-200", "linear-latency"],
)
def test_auto_on_unseen_shapes_over_2000_rollouts(server: SimConfig, knee: int, best_fixed: int, floor: float) -> None:
    result = compare(server, 2000, (best_fixed,), knee, AUTO, jitter=0.1)
    assert result.ratio >= floor, [(row["limit"], row["reason"]) for row in result.auto.trace]
    assert result.auto.failed == 0 and result.overshoot <= 2.7


def test_auto_finds_the_peak_of_a_gpu_like_server_over_10000_rollouts() -> None:
    """The doubling past the peak (64 -> 128) lost throughput, so 3/4 of the knee is measured and kept: the steady
    limit stays at 48-56, where main's controller saw-toothed at 64-86 (0.75 of fixed 48)."""
    server = SimConfig(latency_ms=100, capacity=48, capacity_exponent=1.5)
    result = compare(server, 10_000, (48,), 48, AUTO, jitter=0.1)
    assert result.ratio >= 0.92
    late = [row["limit"] for row in result.auto.trace if row["t"] > result.auto.wall / 2]
    assert min(late) >= 48 and max(late) <= 60

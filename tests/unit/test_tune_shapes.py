"""`--parallel auto` on server shapes the recorded sweeps do not have, in virtual time (rollouts/tune/virtual.py):
the real controller, limiter and retry policy against the simulated server's load model, deterministic and fast."""

from __future__ import annotations

import pytest

from rollouts.sim.server import SimConfig
from rollouts.tune.virtual import converged_at, run


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

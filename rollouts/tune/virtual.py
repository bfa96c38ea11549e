"""`--parallel auto` against the simulated server's load model, in virtual time: deterministic, no machine in the way.

The real `AutoParallel` (its windows, its settling, the `Controller`), the real `InflightLimiter` and the real
`RetryPolicy` run on an event loop whose clock jumps to the next timer instead of waiting for it, against the load
model of `rollouts-sim` (`load_latency`, its `TokenBucket`): the shapes `bench/tune_parallelism.py` runs over loopback,
without the client's CPU, the loopback stack or other jobs on the machine.
A run of 10,000 rollouts takes about a second.

    compare(SimConfig(latency_ms=300, capacity=48, capacity_exponent=1.5), 2000, fixed=(48, 96, 256))

`jitter` (a fraction of the latency, Gaussian) and `client_ms` (CPU the client spends per answer, one core: a ceiling
of 1000 / client_ms answers a second) put back some of what a real machine adds.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from dataclasses import dataclass, field
from typing import Any

from rollouts.client.retry import RetryPolicy
from rollouts.collector.limits import InflightLimiter
from rollouts.sim.server import SimConfig, TokenBucket, load_latency
from rollouts.tune.aimd import AttemptLog, AutoParallel, ControllerConfig


class _SkippingSelector(selectors.SelectSelector):
    """Never waits: a timeout moves the loop's virtual clock forward instead."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("virtual loop: nothing scheduled and nothing to wait for")
            self.clock[0] += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is virtual: `asyncio.sleep(60)` returns at once, 60 s later by its clock."""

    def __init__(self) -> None:
        self.clock = [0.0]
        super().__init__(_SkippingSelector(self.clock))

    def time(self) -> float:
        return self.clock[0]


@dataclass
class ModelServer:
    """The simulated server's load model: latency by requests in flight, 429 from the token bucket."""

    config: SimConfig
    jitter: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    in_flight: int = 0
    bucket: TokenBucket | None = None

    async def request(self, loop: asyncio.AbstractEventLoop) -> str:
        """One attempt: its outcome, "ok" or "429" (answered at once), after the latency it took."""
        if self.bucket is None:
            self.bucket = TokenBucket(self.config.rate_limit_rps, loop.time())
        if not self.bucket.take(loop.time()):
            return "429"
        self.in_flight += 1
        try:
            seconds = self.config.latency_ms / 1000
            if self.jitter:
                seconds = max(0.0, self.rng.gauss(seconds, self.jitter * seconds))
            await asyncio.sleep(load_latency(self.config, seconds, self.in_flight))
        finally:
            self.in_flight -= 1
        return "ok"


@dataclass
class Run:
    count: int
    done: list[float]  # when each rollout ended (s from the start)
    failed: int
    trace: list[dict[str, Any]]  # the controller's decisions, t in s from the start (empty for a fixed run)

    @property
    def wall(self) -> float:
        return max(self.done, default=0.0)

    @property
    def rate(self) -> float:
        return len(self.done) / self.wall if self.wall else 0.0

    @property
    def peak_limit(self) -> int:
        return max((row["limit"] for row in self.trace), default=0)


async def _collect(
    server: ModelServer, count: int, fixed: int | None, config: ControllerConfig, client_ms: float, seed: int
) -> Run:
    loop = asyncio.get_running_loop()
    retry, rng = RetryPolicy(), random.Random(seed)
    log = AttemptLog(keep_s=1e9)
    limiter = InflightLimiter(fixed or config.start)
    auto = AutoParallel(limiter, config, log, wall_clock=loop.time).start() if fixed is None else None
    done: list[float] = []
    failed = 0
    issued = 0
    cpu_free = [0.0]  # the client's one core: answers are handled one after another

    async def handle_answer() -> None:
        cpu_free[0] = max(loop.time(), cpu_free[0]) + client_ms / 1000
        await asyncio.sleep(cpu_free[0] - loop.time())

    async def rollout() -> None:
        nonlocal failed
        for attempt in range(retry.max_retries + 1):
            started = loop.time()
            outcome = await server.request(loop)
            if client_ms:
                await handle_answer()
            log.record(loop.time() - started, outcome, now=loop.time())
            if outcome == "ok":
                done.append(loop.time())
                return
            if attempt < retry.max_retries:
                await asyncio.sleep(retry.delay(attempt, rng, retry_after_s=server.config.retry_after_s))
        failed += 1

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            await limiter.acquire()
            if issued >= count:
                limiter.release()
                return
            issued += 1
            try:
                await rollout()
            finally:
                limiter.release()

    await asyncio.gather(*(worker() for _ in range(fixed or config.max_parallel)))
    trace: list[dict[str, Any]] = []
    if auto is not None:
        await auto.stop()
        trace = auto.trace[:-1]  # without the final "stopped" row
    return Run(count, done, failed, trace)


def run(
    server: SimConfig,
    count: int,
    fixed: int | None = None,
    config: ControllerConfig | None = None,
    *,
    jitter: float = 0.0,
    client_ms: float = 0.0,
    seed: int = 0,
) -> Run:
    """`count` rollouts against `server` at `fixed` in flight, or with the controller (`config`) when None."""
    loop = VirtualLoop()
    model = ModelServer(server, jitter, random.Random(seed))
    try:
        return loop.run_until_complete(
            _collect(model, count, fixed, config or ControllerConfig(), client_ms=client_ms, seed=seed)
        )
    finally:
        loop.close()


def converged_at(done: list[float], target: float, end: float, window: float = 5.0) -> float | None:
    """When the rolling `window` s rate of `done` first reaches 0.9 of `target` (None: never). A run shorter than
    `window` is judged over its whole length."""
    window = min(window, end)
    t = window
    while t <= end + 1e-9 and window > 0:
        if sum(t - window <= d < t for d in done) / window >= 0.9 * target:
            return t
        t += 0.5
    return None


@dataclass
class Comparison:
    count: int
    knee: int
    fixed: dict[int, Run]
    auto: Run

    @property
    def best_parallel(self) -> int:
        return max(self.fixed, key=lambda p: self.fixed[p].rate)

    @property
    def best(self) -> float:
        return self.fixed[self.best_parallel].rate

    @property
    def ratio(self) -> float:
        return self.auto.rate / self.best if self.best else 0.0

    @property
    def converged_s(self) -> float | None:
        return converged_at(self.auto.done, self.best, self.auto.wall)

    @property
    def overshoot(self) -> float:
        return self.auto.peak_limit / self.knee


def compare(
    server: SimConfig,
    count: int,
    fixed: tuple[int, ...],
    knee: int,
    config: ControllerConfig | None = None,
    **options: Any,
) -> Comparison:
    """Each fixed setting and the controller make `count` rollouts against the same server model."""
    runs = {parallel: run(server, count, parallel, config, **options) for parallel in fixed}
    return Comparison(count, knee, runs, run(server, count, None, config, **options))

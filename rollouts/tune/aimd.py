"""`--parallel auto`: an AIMD controller of the in-flight limit, driven by what the client itself sees.

Signals, per measurement window (no server metrics needed, so hosted APIs work):
    throughput      successful model requests per second
    latency         p50 of successful requests
    errors          the fraction of attempts answered 429 or 5xx, or that timed out or lost the connection
and, when the server's `/metrics` answers (vLLM; llama.cpp's `llama-server` started with `--metrics`), its queue
(vLLM's `num_requests_waiting`, llama.cpp's `requests_deferred`) and vLLM's KV-cache usage.

Start: the limit doubles while throughput rises by >= `gain` per doubling and neither errors nor latency jump; the
first doubling that fails returns to the level before it (the knee). A server that reports its queue is trusted over
the client's view: while nothing waits there the limit keeps doubling (a free slot is capacity, even when a CPU-bound
server turns it into latency rather than throughput), and the first doubling whose requests wait is the knee.
Steady: additive increase of `step` x the knee per window; multiplicative decrease (x `backoff`) on errors, a
latency jump or a server queue. Latency holds while p50 stays under `latency_factor` x the reference level's and, when
throughput did not rise, under 1 + `latency_slack` times it (Little's law: more in flight at the same throughput is a
queue). Windows where the work does not fill the limit (start-up, the tail of a run) decide nothing.
`Controller.decide` is pure (tested on recorded traces); `AutoParallel` runs it on the loop against a limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import polars as pl

from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import http_client
from rollouts.client.transport import cookie_free_transport
from rollouts.collector.limits import InflightLimiter
from rollouts.storage import Store

BAD_OUTCOMES = ("429", "5xx", "timeout", "connection")


@dataclass(frozen=True)
class ControllerConfig:
    min_parallel: int = 8
    max_parallel: int = 1024
    initial: int | None = None  # default: min_parallel
    gain: float = 0.05  # a doubling must raise throughput by this fraction to count as a gain
    error_threshold: float = 0.02  # fraction of bad attempts that counts as "the server pushes back"
    latency_factor: float = 2.0  # p50 above this multiple of the reference level's p50 is a jump
    latency_slack: float = 0.5  # p50 up by this fraction with no throughput gain: requests queue at the server
    step: float = 0.05  # additive increase per steady window, as a fraction of the knee
    backoff: float = 0.8  # multiplicative decrease (at most: errors may say the limit is over by less)
    error_margin: float = 0.05  # a cut on errors goes this fraction below the level they point at
    waiting_fraction: float = 0.10  # vLLM: requests waiting above this fraction of the limit is a queue
    kv_cache_full: float = 0.98
    fall: float = 0.05  # throughput below the reference level's by this fraction has fallen (noise allowed)
    probe: float = 0.75  # after a knee where throughput fell, the level below it measured once (x the knee)
    saturated: float = 0.8  # a window counts only when the mean in flight is at least this fraction of the limit

    def __post_init__(self) -> None:
        if not 1 <= self.min_parallel <= self.max_parallel:
            raise ValueError(f"need 1 <= min_parallel ({self.min_parallel}) <= max_parallel ({self.max_parallel})")

    @property
    def start(self) -> int:
        return min(self.max_parallel, max(self.min_parallel, self.initial or self.min_parallel))


@dataclass
class WindowStats:
    """What one measurement window saw at one limit."""

    limit: int
    seconds: float
    ok: int
    bad: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p95_ms: float | None = None
    in_flight: float | None = None  # mean rollouts holding a slot
    waiting: float | None = None  # requests queued at the server (vLLM num_requests_waiting, llama.cpp deferred)
    kv_cache: float | None = None  # vLLM KV-cache usage, 0..1

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_fraction(self) -> float:
        bad = sum(self.bad.values())
        return bad / (bad + self.ok) if bad + self.ok else 0.0


@dataclass(frozen=True)
class Decision:
    limit: int
    reason: str
    phase: str


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.limit = config.start
        self.phase = "start"
        self.reference: WindowStats | None = None  # the last accepted level
        self.knee: int | None = None
        self.reprobe = False  # probe below the knee again once steady has measured it

    def decide(self, window: WindowStats) -> Decision:
        c = self.config
        if window.in_flight is not None and window.in_flight < c.saturated * window.limit:
            return Decision(self.limit, "not saturated", self.phase)
        ref = self.reference
        if self.phase == "steady" and ref is not None and window.limit <= ref.limit and not self._errors(window):
            # a fresh measurement at or below the reference level: judge what follows against today's latency and
            # throughput (a client that got slower is no reason to keep cutting)
            self.reference = window
        pushback = self._pushback(window)
        if self.phase == "start":
            gained = (
                self.reference is None
                or window.waiting is not None  # the server's queue decides (see _pushback)
                or window.throughput >= self.reference.throughput * (1 + c.gain)
            )
            if pushback or not gained:
                self.phase = "steady"
                reason = f"knee: {pushback or 'throughput gain below ' + format(c.gain, '.0%')}"
                if self.reference is None:
                    self.limit = self.knee = self._cut(window)
                    return Decision(self.limit, reason, self.phase)
                # the knee lies below this level: go back to the last good one, or, when the server refused a
                # fraction of the requests, to the level that fraction points at
                self.knee = self.reference.limit
                self.limit = max(self.knee, self._refused_level(window))
                queued = window.waiting is not None and pushback is not None and pushback.startswith("server queue")
                if self._fell(window, 2 * c.fall) and window.error_fraction <= c.error_threshold and not queued:
                    # throughput fell past the knee, by more than noise (a GPU whose batches outgrow it): the peak
                    # may lie below the last good level too; measure 3/4 of it, and once more against a steady
                    # measurement of the knee if this first one did worse (its start window may have caught a burst).
                    # Not when the server's queue set the knee: nothing waited at the last good level, so fewer in
                    # flight would only leave slots idle (a fall there is the host's noise, e.g. a busy CPU server)
                    self.reprobe = True
                    return self._probe(f"{reason}; probe below it")
                return Decision(self.limit, reason, self.phase)
            self.reference = window
            if self.limit >= c.max_parallel:
                self.phase, self.knee = "steady", self.limit
                return Decision(self.limit, "max_parallel", self.phase)
            self.limit = min(c.max_parallel, self.limit * 2)
            return Decision(self.limit, "double", self.phase)
        if self.phase == "probe":
            self.phase = "steady"
            ref = self.reference
            if not pushback and ref is not None and window.throughput >= ref.throughput:
                self.reference, self.knee, self.reprobe = window, self.limit, False
                return Decision(self.limit, "knee: the probe below did as well or better", self.phase)
            self.limit = self.knee or self.limit
            return Decision(self.limit, "knee: the probe below did worse", self.phase)
        if self.reprobe and not pushback and window.limit == self.knee:
            self.reprobe = False
            return self._probe(f"probe below the knee again ({window.throughput:.0f}/s at {window.limit})")
        if pushback:
            self.limit = self._cut(window)
            return Decision(self.limit, pushback, self.phase)
        ref = self.reference
        if ref is not None and window.limit > ref.limit and self._fell(window):
            self.limit = ref.limit
            return Decision(
                self.limit,
                f"throughput fell ({window.throughput:.0f}/s vs {ref.throughput:.0f}/s at {ref.limit})",
                self.phase,
            )
        if self.reference is None or window.throughput >= self.reference.throughput * (1 + c.gain):
            self.reference = window  # a real gain at this level: measure later jumps against it
        self.limit = min(c.max_parallel, self.limit + max(1, round(c.step * (self.knee or self.limit))))
        return Decision(self.limit, "increase", self.phase)

    def _probe(self, reason: str) -> Decision:
        self.phase = "probe"
        self.limit = max(self.config.min_parallel, round((self.knee or self.limit) * self.config.probe))
        return Decision(self.limit, reason, self.phase)

    def _errors(self, window: WindowStats) -> bool:
        return window.error_fraction > self.config.error_threshold

    def _fell(self, window: WindowStats, by: float | None = None) -> bool:
        """Throughput below the reference level's by more than `by` (default `fall`)."""
        ref = self.reference
        return ref is not None and window.throughput < ref.throughput * (1 - (self.config.fall if by is None else by))

    def _cut(self, window: WindowStats) -> int:
        """Multiplicative decrease: x `backoff`, or less when errors say by how much the limit is over (a rate limit
        that refuses 6 % of the requests is 6 % over, not 20 %)."""
        factor = self.config.backoff
        if window.error_fraction > self.config.error_threshold:
            factor = max(factor, 1 - window.error_fraction - self.config.error_margin)
        return max(self.config.min_parallel, min(self.limit - 1, int(self.limit * factor)))

    def _refused_level(self, window: WindowStats) -> int:
        """The limit at which the requests this window had refused would not have been sent (0 without errors)."""
        if window.error_fraction <= self.config.error_threshold:
            return 0
        return int(window.limit * (1 - window.error_fraction - self.config.error_margin))

    def _pushback(self, window: WindowStats) -> str | None:
        c = self.config
        if window.error_fraction > c.error_threshold:
            worst = max(window.bad, key=lambda k: window.bad[k])
            return f"errors {window.error_fraction:.1%} ({worst})"
        if window.waiting is not None:  # the server's own queue says more than client latency can
            if window.waiting > c.waiting_fraction * window.limit or (window.kv_cache or 0.0) >= c.kv_cache_full:
                kv = f", KV cache {window.kv_cache:.0%}" if window.kv_cache is not None else ""
                return f"server queue ({window.waiting:.0f} waiting{kv})"
            return None
        ref = self.reference
        if ref is None or not ref.p50_ms or not window.p50_ms:
            return None
        ratio = window.p50_ms / ref.p50_ms
        flat = window.throughput < ref.throughput * (1 + c.gain)
        # at the start a doubling that clearly gained (twice the gain: a short window's noise makes the gain itself)
        # is judged by its throughput: latency linear in load nears x 2 per doubling, and a busy client adds to it
        clear_gain = self.phase == "start" and window.throughput >= ref.throughput * (1 + 2 * c.gain)
        jump = ratio > c.latency_factor and not clear_gain
        if jump or (ratio > 1 + c.latency_slack and flat):
            return f"latency jump (p50 {window.p50_ms:.0f} ms vs {ref.p50_ms:.0f} ms at {ref.limit})"
        return None


class AttemptLog:
    """Every model request attempt (retries included): when it ended, how long it took, how it went."""

    def __init__(self, keep_s: float = 120.0) -> None:
        self.keep_s = keep_s
        self.events: deque[tuple[float, float, str]] = deque()

    def record(self, latency_s: float, outcome: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.events.append((now, latency_s, outcome))
        while self.events and self.events[0][0] < now - self.keep_s:
            self.events.popleft()

    def window(self, start: float, end: float, limit: int, in_flight: float | None = None) -> WindowStats:
        ok_latency: list[float] = []
        bad: dict[str, int] = {}
        for t, latency, outcome in self.events:
            if start <= t < end:
                if outcome == "ok":
                    ok_latency.append(latency)
                elif outcome in BAD_OUTCOMES:
                    bad[outcome] = bad.get(outcome, 0) + 1
        ok_latency.sort()
        pick = (
            (lambda q: round(1000 * ok_latency[min(len(ok_latency) - 1, int(q * len(ok_latency)))], 3))
            if ok_latency
            else (lambda q: None)
        )
        return WindowStats(
            limit=limit,
            seconds=end - start,
            ok=len(ok_latency),
            bad=bad,
            p50_ms=pick(0.5),
            p95_ms=pick(0.95),
            in_flight=in_flight,
        )


def outcome_of(status: int | None, exc: BaseException | None = None) -> str:
    if exc is not None:
        return "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
    if status == 429:
        return "429"
    if status is not None and status >= 500:
        return "5xx"
    return "ok" if status is not None and status < 400 else "client error"


class ObservedTransport(httpx.AsyncBaseTransport):
    """Wraps the client's transport and logs every attempt to the model endpoint (tool calls are not logged)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, log: AttemptLog, url_prefix: str) -> None:
        self.inner, self.log, self.prefix = inner, log, url_prefix.rstrip("/")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not str(request.url).startswith(self.prefix):
            return await self.inner.handle_async_request(request)
        started = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self.log.record(time.monotonic() - started, outcome_of(None, exc))
            raise
        self.log.record(time.monotonic() - started, outcome_of(response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def observed_http_client(
    limit: int, timeout: float, auth: EndpointAuth | None, log: AttemptLog, model_url: str
) -> httpx.AsyncClient:
    """`model.http_client` whose model requests (every retry too) land in `log`; `limit` connections, as ever."""
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    return http_client(
        limit,
        timeout,
        auth,
        transport=ObservedTransport(cookie_free_transport(limits), log, model_url),
    )


# Prometheus gauges of requests that wait for a free slot: vLLM's, and llama.cpp's (`llama-server --metrics`)
WAITING_METRICS = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")


def parse_server_metrics(text: str) -> tuple[float | None, float | None]:
    """(requests waiting, KV-cache usage 0..1) from a model server's Prometheus text: vLLM's summed over its engines,
    llama.cpp's waiting only (it reports no KV-cache ratio)."""
    waiting = usage = None
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        if metric in WAITING_METRICS:
            waiting = (waiting or 0.0) + number
        elif metric in ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"):
            usage = max(usage or 0.0, number)
    return waiting, usage


class AutoParallel:
    """Runs the controller on the collector loop: measures windows, resizes the limiter, keeps the trace."""

    def __init__(
        self,
        limiter: InflightLimiter,
        config: ControllerConfig,
        log: AttemptLog,
        *,
        metrics_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        min_window_s: float = 1.0,
        start_window_s: float = 0.5,
        max_window_s: float = 10.0,
        tick_s: float = 0.1,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter, self.log, self.controller = limiter, log, Controller(config)
        self.wall_clock = wall_clock  # the trace's timestamps
        self.metrics_url, self.http = metrics_url, http
        self.min_window_s, self.max_window_s, self.tick_s = min_window_s, max_window_s, tick_s
        self.start_window_s = min(start_window_s, min_window_s)  # the start phase's shortest window
        self.trace: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        limiter.resize(self.controller.limit)

    def start(self) -> AutoParallel:
        self._record(self.controller.limit, "start", "start", None)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._record(0, "stopped", self.controller.phase, None)  # this process's share ends here

    async def _run(self) -> None:
        clock = asyncio.get_running_loop().time  # time.monotonic on a real loop; a virtual one in rollouts.tune.virtual
        p50_s = 0.0
        window_start = clock()
        samples: list[int] = []
        while True:
            await asyncio.sleep(self.tick_s)
            now = clock()
            if now < window_start:  # settling after a change: completions now reflect the old limit
                continue
            samples.append(self.limiter.in_flight)
            shortest = self.start_window_s if self.controller.phase == "start" else self.min_window_s
            length = min(self.max_window_s, max(shortest, 2 * p50_s))
            if now - window_start < length:
                continue
            window = self.log.window(window_start, now, self.limiter.limit, sum(samples) / len(samples))
            samples.clear()
            if window.ok + sum(window.bad.values()) == 0 and now - window_start < self.max_window_s:
                continue
            if self.metrics_url:
                window.waiting, window.kv_cache = await self._server_metrics()
            decision = self.controller.decide(window)
            p50_s = (window.p50_ms or 0.0) / 1000 or p50_s
            changed = decision.limit != self.limiter.limit
            if changed:
                self.limiter.resize(decision.limit)
            self._record(decision.limit, decision.reason, decision.phase, window)
            window_start = now + (min(p50_s, self.max_window_s) if changed else 0.0)

    async def _server_metrics(self) -> tuple[float | None, float | None]:
        url, http = self.metrics_url, self.http
        try:
            if url is None or http is None:
                raise ValueError("no metrics URL or no HTTP client")
            response = await http.get(url, timeout=2.0)
            if response.status_code != 200:
                raise ValueError(response.status_code)
            return parse_server_metrics(response.text)
        except (httpx.HTTPError, ValueError, AttributeError):
            self.metrics_url = None  # no server queue to read: client-side signals only from now on
            return None, None

    def _record(self, limit: int, reason: str, phase: str, window: WindowStats | None) -> None:
        row: dict[str, Any] = {"t": self.wall_clock(), "limit": limit, "reason": reason, "phase": phase}
        if window is not None:
            row.update(
                throughput=round(window.throughput, 3),
                p50_ms=window.p50_ms,
                error_fraction=round(window.error_fraction, 4),
                in_flight=round(window.in_flight or 0.0, 2),
            )
        self.trace.append(row)


def server_metrics_url(model_url: str) -> str:
    """vLLM and llama.cpp serve Prometheus metrics at the server root, next to /v1."""
    return model_url.rstrip("/").removesuffix("/v1") + "/metrics"


def write_trace(store: Store, trace: list[dict[str, Any]], part: str | None = None) -> str:
    """This process's chosen limits over time, for the run's timeline: `profile/parallel/<host>-<pid>-<id>.jsonl`."""
    name = f"{part or f'{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}'}.jsonl"
    store.write_lines((json.dumps(row) for row in trace), "profile", "parallel", name)
    return store.url("profile", "parallel", name)


def read_trace(store: Store) -> pl.DataFrame | None:
    """Every process's trace as (process, t, limit), or None when no run of this directory used `--parallel auto`."""
    rows = []
    for path in store.glob("profile/parallel/*.jsonl"):
        process = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
        with store.fs.open(path, "rb") as fh:
            rows += [
                {"process": process, "t": float(r["t"]), "limit": int(r["limit"])}
                for r in (json.loads(line) for line in fh if line.strip())
            ]
    return pl.DataFrame(rows, schema={"process": pl.String, "t": pl.Float64, "limit": pl.Int64}) if rows else None

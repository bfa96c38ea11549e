"""`rollouts tune`: send real prompts at doubling --parallel, measure each step, find the knee, say what to use.

Each step runs `parallel` workers against the endpoint for at most `step_seconds` and `step_requests` requests,
without retries (a 429 must show as an error, not hide as latency). Throughput counts the requests that finished
between the end of the first full round (the pipe is full from then on) and the last request sent (the drain after
it is not measured). The connection pool of each step is sized to its `parallel`, as `rollouts collect` sizes it.
`TuneConfig` holds the options; the command line is generated from it (commands/tune.py).

When the server publishes its queue on `/metrics` (vLLM; llama.cpp's `llama-server --metrics`), each step also
samples it, and the server's queue decides the knee instead of throughput and latency: the first step whose
requests wait at the server is past it (see `find_knee`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollouts.config import CollectConfig, ConcurrencyConfig, EndpointConfig, SamplingConfig, api_key_from_env
from rollouts.errors import InputError, ProviderError, ResponseParseError, ResponseTooLarge, RolloutsError
from rollouts.options import Cli, field_of

if TYPE_CHECKING:  # the HTTP client and storage load httpx, aiohttp and fsspec: not for `rollouts tune --help`
    from rollouts.client.credentials import EndpointAuth
    from rollouts.client.model import ModelClient

DRAIN_CAP_S = 30.0


@dataclass
class StepResult:
    parallel: int
    seconds: float  # the measured window
    sent: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    throughput: float = 0.0  # successful requests per second in the window
    p50_ms: float | None = None
    p95_ms: float | None = None
    error_rate: float = 0.0
    chosen: bool = False
    note: str = ""
    waiting: float | None = None  # median of the server's queue sampled during the step (None: not published)


@dataclass(frozen=True)
class KneeRule:
    gain: float = 0.10  # a doubling that raises throughput by less than this is the knee
    latency_factor: float = 2.0  # p95 above this multiple of the previous step's is a jump
    error_rate: float = 0.02  # an error rate above this (and above twice the previous step's) is a jump
    waiting_fraction: float = 0.10  # requests waiting at the server above this fraction of `parallel`: a queue


class TuneConfig(BaseModel):
    """Options of `rollouts tune`. The ones `rollouts collect` has too are its fields, reused: one declaration each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = field_of(CollectConfig, "input")
    model_url: str = field_of(EndpointConfig, "model_url", required=True)  # no --model-block here: required
    model: str = field_of(EndpointConfig, "model", required=True)
    api: Literal["chat", "responses"] = field_of(EndpointConfig, "api")
    api_key_env: str | None = field_of(EndpointConfig, "api_key_env")
    check_model: bool = field_of(EndpointConfig, "check_model")
    start: int = Field(8, ge=1, description="first --parallel step")
    max_parallel: int = field_of(ConcurrencyConfig, "max_parallel")
    step_seconds: float = Field(10.0, gt=0, description="time bound of each step")
    step_requests: Annotated[int | None, Cli(metavar="N")] = Field(
        None, ge=1, description="request bound of each step (default max(200, 20 x parallel))"
    )
    sample: int = Field(256, ge=1, description="prompts to use, from the start of INPUT, cycled")
    temperature: float | None = field_of(SamplingConfig, "temperature")
    max_output_tokens: int | None = field_of(SamplingConfig, "max_output_tokens")
    request_timeout: float = field_of(EndpointConfig, "request_timeout")
    gain: float = Field(KneeRule.gain, ge=0, description="smallest throughput gain per doubling that is worth it")
    out: str = Field("./tune", description="where tune.csv, tune.json and tune.svg go")

    @model_validator(mode="after")
    def _ladder(self) -> TuneConfig:
        if self.start > self.max_parallel:
            raise ValueError(f"need 1 <= --start ({self.start}) <= --max-parallel ({self.max_parallel})")
        return self

    def api_key(self) -> str | None:
        return api_key_from_env(self.api_key_env)

    def sampling(self) -> dict[str, Any]:
        """What every request is sent on top of its row's own fields."""
        forced = {"temperature": self.temperature, "max_output_tokens": self.max_output_tokens}
        return {k: v for k, v in forced.items() if v is not None}

    def rule(self) -> KneeRule:
        return KneeRule(gain=self.gain)


def find_knee(steps: list[StepResult], rule: KneeRule = KneeRule()) -> tuple[int, str]:
    """Index of the step to use and why: the step before the first one whose gain is below `rule.gain`, or whose
    latency or errors jump; the last step when throughput still rose at every step. A step that sampled the server's
    queue is judged by it alone (besides errors): past the knee when requests waited there."""
    if not steps:
        raise ValueError("no steps measured")
    if steps[0].error_rate > rule.error_rate:
        return 0, f"errors at the smallest step already ({steps[0].error_rate:.1%}): start lower or check the server"
    for i in range(1, len(steps)):
        before, step = steps[i - 1], steps[i]
        if step.error_rate > max(rule.error_rate, 2 * before.error_rate):
            return i - 1, f"errors jump at {step.parallel} ({before.error_rate:.1%} -> {step.error_rate:.1%})"
        if step.waiting is not None:  # the server's own queue says more than client throughput and latency can
            if step.waiting > rule.waiting_fraction * step.parallel:
                return i - 1, f"requests wait at the server at {step.parallel} ({step.waiting:g} queued)"
            continue
        if before.p95_ms and step.p95_ms and step.p95_ms > rule.latency_factor * before.p95_ms:
            return i - 1, f"p95 latency jumps at {step.parallel} ({before.p95_ms:.0f} -> {step.p95_ms:.0f} ms)"
        if step.throughput < before.throughput * (1 + rule.gain):
            gain = step.throughput / before.throughput - 1 if before.throughput else 0.0
            return i - 1, f"throughput gain {gain:+.0%} from {before.parallel} to {step.parallel} (< {rule.gain:.0%})"
    last = steps[-1]
    if last.waiting is not None:
        return len(steps) - 1, f"nothing waited at the server up to {last.parallel}: try a larger --max-parallel"
    return len(steps) - 1, f"throughput still rising at {last.parallel}: try a larger --max-parallel"


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def measure_step(
    client: ModelClient,
    prompts: list[dict[str, Any]],
    parallel: int,
    *,
    step_seconds: float,
    step_requests: int,
    sampling: dict[str, Any],
) -> StepResult:
    """One step at `parallel` in flight; see the module docstring for what is measured."""
    from rollouts.records import input_messages
    from rollouts.tune.aimd import outcome_of  # it loads polars: not for every command's --help

    cycle = itertools.cycle(prompts)
    done: list[tuple[float, float, str]] = []  # (finished, latency ms, outcome)
    sent = 0
    started = time.monotonic()
    deadline = started + step_seconds
    # Slow steps (latency near the time bound) run on until two rounds are done, up to 4x the bound: one round gives
    # a latency but no window to measure throughput in.
    hard_deadline = started + 4 * step_seconds
    last_sent = started

    def more() -> bool:
        now = time.monotonic()
        return sent < step_requests and now < hard_deadline and (now < deadline or len(done) < 2 * parallel)

    async def worker() -> None:
        nonlocal sent, last_sent
        while more():
            sent += 1
            last_sent = time.monotonic()
            params = next(cycle)
            t = time.monotonic()
            try:
                call = await client.create(input_messages(params), params, sampling)
                done.append((time.monotonic(), call.latency_ms, "ok"))
            except ResponseParseError:
                done.append((time.monotonic(), (time.monotonic() - t) * 1000, "bad response"))
            except ResponseTooLarge:  # status 200, but no rollout could use the reply: an error, not "ok"
                done.append((time.monotonic(), (time.monotonic() - t) * 1000, "too large"))
            except ProviderError as exc:
                status = exc.status_code
                outcome = (
                    outcome_of(status)
                    if status is not None
                    else ("timeout" if "timed out" in exc.message else "connection")
                )
                done.append((time.monotonic(), (time.monotonic() - t) * 1000, outcome))

    tasks = [asyncio.ensure_future(worker()) for _ in range(parallel)]
    try:
        finished, _ = await asyncio.wait(tasks, timeout=4 * step_seconds + DRAIN_CAP_S)
    finally:
        # Bounded drain: a stuck request must not hold the sweep. And on Ctrl-C (this coroutine cancelled) no worker
        # may outlive the step's connection pool, or each one ends with "Session is closed" as an unretrieved error.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in finished:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    # The window opens at the `parallel`-th completion (one full round done, the pipe full) and closes at the last
    # request sent; completions at its opening instant are excluded so a synchronous round is not counted twice.
    finish_times = sorted(t for t, _, _ in done)
    first = finish_times[min(parallel, len(finish_times)) - 1] if finish_times else started
    end = max(last_sent, first)
    window_ms = [ms for t, ms, outcome in done if first < t <= end and outcome == "ok"]
    ok_ms = [ms for _, ms, outcome in done if outcome == "ok"]
    # Latency of the window's requests, clear of the first round's connection set-up, when it holds a round or more.
    latency_ms = window_ms if len(window_ms) >= parallel else ok_ms
    errors: dict[str, int] = {}
    for _, _, outcome in done:
        if outcome != "ok":
            errors[outcome] = errors.get(outcome, 0) + 1
    seconds = end - first
    return StepResult(
        parallel=parallel,
        seconds=round(seconds, 3),
        sent=sent,
        ok=len(ok_ms),
        errors=errors,
        throughput=round(len(window_ms) / seconds, 3) if seconds > 0 else 0.0,
        p50_ms=_quantile(latency_ms, 0.5),
        p95_ms=_quantile(latency_ms, 0.95),
        error_rate=round(sum(errors.values()) / len(done), 4) if done else 0.0,
    )


class QueueSampler:
    """Samples the server's request queue from its `/metrics` every `every_s` while a step runs (its own client, so
    the step's pool of exactly `parallel` connections stays the workers'). The first sample is taken `every_s` in,
    once the step's requests are out (one at its start reads the queue the step has not filled yet), and a step that
    ends before any sample came back waits for the one on its way: a busy server (llama.cpp answers /metrics between
    decoding steps) can take longer than a short step to answer."""

    def __init__(self, model_url: str, auth: EndpointAuth | None, every_s: float = 0.25) -> None:
        from rollouts.tune.aimd import server_metrics_url

        self.url, self.auth, self.every_s = server_metrics_url(model_url), auth, every_s
        self.samples: list[float] = []
        self.readable = True
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()  # the first sample came back, or the queue cannot be read

    async def __aenter__(self) -> QueueSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._task is not None:
            if exc_type is None:  # a step that ended as planned; a stopped one (Ctrl-C, an error) does not wait
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._answered.wait(), timeout=10.0)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import httpx

        from rollouts.client.model import http_client
        from rollouts.tune.aimd import parse_server_metrics

        async with http_client(1, 5.0, self.auth) as http:
            while True:
                await asyncio.sleep(self.every_s)
                try:
                    reply = await http.get(self.url)
                    waiting = parse_server_metrics(reply.text)[0] if reply.status_code == 200 else None
                except httpx.HTTPError:
                    waiting = None
                if waiting is None:
                    self.readable = False
                    self._answered.set()
                    return
                self.samples.append(waiting)
                self._answered.set()

    def median(self) -> float | None:
        """The step's queue, or None when the server publishes none."""
        if not self.readable or not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[len(ordered) // 2]


def ladder(start: int, maximum: int) -> list[int]:
    """start, 2 x start, ... up to and including `maximum` (as the last step even when not a power of two)."""
    values = [start]
    while values[-1] * 2 <= maximum:
        values.append(values[-1] * 2)
    if values[-1] < maximum:
        values.append(maximum)
    return values


async def sweep(
    config: TuneConfig,
    prompts: list[dict[str, Any]],
    *,
    auth: EndpointAuth | None = None,
    report: Callable[[StepResult], None] | None = None,
    stop_at_knee: bool = True,
) -> tuple[list[StepResult], int, str]:
    """Measure steps until the knee shows (or --max-parallel); returns the steps, the index to use, and why."""
    from rollouts.client.model import ModelClient, http_client

    steps: list[StepResult] = []
    rule = config.rule()
    queue_readable = True  # until the server's /metrics shows no queue
    for parallel in ladder(config.start, config.max_parallel):
        # Connection limits follow --parallel: a pool of exactly `parallel` connections, as collect opens.
        async with http_client(parallel, config.request_timeout, auth) as http:
            client = ModelClient(http, config.model_url, config.model, config.api, max_retries=0)
            queue = QueueSampler(config.model_url, auth) if queue_readable else None
            async with queue or contextlib.nullcontext():
                step = await measure_step(
                    client,
                    prompts,
                    parallel,
                    step_seconds=config.step_seconds,
                    step_requests=config.step_requests or max(200, 20 * parallel),
                    sampling=config.sampling(),
                )
            if queue is not None:
                step.waiting = queue.median()
                queue_readable = step.waiting is not None
        steps.append(step)
        if report:
            report(step)
        index, reason = find_knee(steps, rule)
        if stop_at_knee and (index < len(steps) - 1 or steps[-1].ok == 0):
            break
    index, reason = find_knee(steps, rule)
    steps[index].chosen = True
    steps[index].note = reason
    return steps, index, reason


def load_prompts(url: str, sample: int) -> list[dict[str, Any]]:
    """The first `sample` usable rows' `responses_create_params` (bad rows are skipped, as collect rejects them)."""
    from rollouts.inputs import iter_lines, normalise_row

    prompts = []
    for _, text in iter_lines(url):
        try:
            prompts.append(normalise_row(json.loads(text))["responses_create_params"])
        except (ValueError, RolloutsError):
            continue
        if len(prompts) >= sample:
            break
    if not prompts:
        raise InputError(f"input {url!r} has no usable prompt rows")
    return prompts


def table(steps: list[StepResult]) -> str:
    lines = [f"{'parallel':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7} {'sent':>6}  note"]
    for s in steps:
        lines.append(
            f"{s.parallel:>8} {s.throughput:>8.1f} {s.p50_ms or 0:>8.0f} {s.p95_ms or 0:>8.0f} "
            f"{s.error_rate:>7.1%} {s.sent:>6}  {('<- use this: ' + s.note) if s.chosen else ''}"
        )
    return "\n".join(lines)


def write_results(
    out: str, steps: list[StepResult], recommended: int, reason: str, settings: dict[str, Any]
) -> list[str]:
    from rollouts.report.charts import parallel_chart
    from rollouts.report.metrics import csv_text
    from rollouts.storage import Store

    store = Store(out)
    rows = [{k: v for k, v in asdict(s).items() if k != "errors"} | {"errors": json.dumps(s.errors)} for s in steps]
    store.write_bytes(csv_text(rows).encode(), "tune.csv")
    store.write_json(
        {
            "recommended_parallel": recommended,
            "reason": reason,
            "settings": settings,
            "steps": [asdict(s) for s in steps],
        },
        "tune.json",
    )
    files = [store.url("tune.csv"), store.url("tune.json")]
    chart = parallel_chart([asdict(s) for s in steps], f"rollouts tune: use --parallel {recommended}")
    if chart:
        store.write_bytes(chart, "tune.svg")
        files.append(store.url("tune.svg"))
    return files

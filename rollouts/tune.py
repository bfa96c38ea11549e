"""`rollouts tune`: send real prompts at doubling --parallel, measure each step, find the knee, say what to use.

Each step runs `parallel` workers against the endpoint for at most `step_seconds` and `step_requests` requests,
without retries (a 429 must show as an error, not hide as latency). Throughput counts the requests that finished
between the end of the first full round (the pipe is full from then on) and the last request sent (the drain after
it is not measured). The connection pool of each step is sized to its `parallel`, as `rollouts collect` sizes it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rollouts.controller import outcome_of
from rollouts.errors import ConfigError, InputError, ProviderError, ResponseParseError, RolloutsError
from rollouts.inputs import iter_lines, normalise_row
from rollouts.model import ModelClient, check_endpoint, http_client
from rollouts.records import input_messages
from rollouts.storage import Store

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


@dataclass(frozen=True)
class KneeRule:
    gain: float = 0.10  # a doubling that raises throughput by less than this is the knee
    latency_factor: float = 2.0  # p95 above this multiple of the previous step's is a jump
    error_rate: float = 0.02  # an error rate above this (and above twice the previous step's) is a jump


def find_knee(steps: list[StepResult], rule: KneeRule = KneeRule()) -> tuple[int, str]:
    """Index of the step to use and why: the step before the first one whose gain is below `rule.gain`, or whose
    latency or errors jump; the last step when throughput still rose at every step."""
    if not steps:
        raise ValueError("no steps measured")
    if steps[0].error_rate > rule.error_rate:
        return 0, f"errors at the smallest step already ({steps[0].error_rate:.1%}): start lower or check the server"
    for i in range(1, len(steps)):
        before, step = steps[i - 1], steps[i]
        if step.error_rate > max(rule.error_rate, 2 * before.error_rate):
            return i - 1, f"errors jump at {step.parallel} ({before.error_rate:.1%} -> {step.error_rate:.1%})"
        if before.p95_ms and step.p95_ms and step.p95_ms > rule.latency_factor * before.p95_ms:
            return i - 1, f"p95 latency jumps at {step.parallel} ({before.p95_ms:.0f} -> {step.p95_ms:.0f} ms)"
        if step.throughput < before.throughput * (1 + rule.gain):
            gain = step.throughput / before.throughput - 1 if before.throughput else 0.0
            return i - 1, f"throughput gain {gain:+.0%} from {before.parallel} to {step.parallel} (< {rule.gain:.0%})"
    return len(steps) - 1, f"throughput still rising at {steps[-1].parallel}: try a larger --max-parallel"


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def measure_step(client: ModelClient, prompts: list[dict[str, Any]], parallel: int, *, step_seconds: float,
                       step_requests: int, sampling: dict[str, Any]) -> StepResult:
    """One step at `parallel` in flight; see the module docstring for what is measured."""
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
            except ProviderError as exc:
                status = exc.fields.get("status_code")
                outcome = outcome_of(status) if status is not None else (
                    "timeout" if "timed out" in exc.message else "connection")
                done.append((time.monotonic(), (time.monotonic() - t) * 1000, outcome))

    tasks = [asyncio.ensure_future(worker()) for _ in range(parallel)]
    finished, pending = await asyncio.wait(tasks, timeout=4 * step_seconds + DRAIN_CAP_S)
    for task in pending:  # bounded drain: a stuck request must not hold the sweep
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in finished:
        if task.exception() is not None:
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
    return StepResult(parallel=parallel, seconds=round(seconds, 3), sent=sent, ok=len(ok_ms),
                      errors=errors, throughput=round(len(window_ms) / seconds, 3) if seconds > 0 else 0.0,
                      p50_ms=_quantile(latency_ms, 0.5), p95_ms=_quantile(latency_ms, 0.95),
                      error_rate=round(sum(errors.values()) / len(done), 4) if done else 0.0)


def ladder(start: int, maximum: int) -> list[int]:
    """start, 2 x start, ... up to and including `maximum` (as the last step even when not a power of two)."""
    values = [start]
    while values[-1] * 2 <= maximum:
        values.append(values[-1] * 2)
    if values[-1] < maximum:
        values.append(maximum)
    return values


async def sweep(model_url: str, model: str, prompts: list[dict[str, Any]], *, api: str = "chat",
                api_key: str | None = None, start: int = 8, max_parallel: int = 1024, step_seconds: float = 10.0,
                step_requests: int | None = None, request_timeout: float = 120.0, sampling: dict[str, Any] | None = None,
                rule: KneeRule = KneeRule(), report=None, stop_at_knee: bool = True) -> tuple[list[StepResult], int, str]:
    """Measure steps until the knee shows (or `max_parallel`); returns the steps, the index to use, and why."""
    steps: list[StepResult] = []
    for parallel in ladder(start, max_parallel):
        # Connection limits follow --parallel: a pool of exactly `parallel` connections, as collect opens.
        async with http_client(parallel, request_timeout, api_key) as http:
            client = ModelClient(http, model_url, model, api, max_retries=0)
            step = await measure_step(client, prompts, parallel, step_seconds=step_seconds,
                                      step_requests=step_requests or max(200, 20 * parallel), sampling=sampling or {})
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
        lines.append(f"{s.parallel:>8} {s.throughput:>8.1f} {s.p50_ms or 0:>8.0f} {s.p95_ms or 0:>8.0f} "
                     f"{s.error_rate:>7.1%} {s.sent:>6}  {('<- use this: ' + s.note) if s.chosen else ''}")
    return "\n".join(lines)


def write_results(out: str, steps: list[StepResult], recommended: int, reason: str, settings: dict[str, Any]) -> list[str]:
    from rollouts.charts import parallel_chart
    from rollouts.profile import csv_text

    store = Store(out)
    rows = [{k: v for k, v in asdict(s).items() if k != "errors"} | {"errors": json.dumps(s.errors)} for s in steps]
    store.write_bytes(csv_text(rows).encode(), "tune.csv")
    store.write_json({"recommended_parallel": recommended, "reason": reason, "settings": settings,
                      "steps": [asdict(s) for s in steps]}, "tune.json")
    files = [store.url("tune.csv"), store.url("tune.json")]
    png = parallel_chart([asdict(s) for s in steps], f"rollouts tune: use --parallel {recommended}")
    if png:
        store.write_bytes(png, "tune.png")
        files.append(store.url("tune.png"))
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollouts tune", description="Find the --parallel where throughput stops "
                                     "rising: real prompts at 8, 16, 32, ... in flight, one bounded step each.")
    add = parser.add_argument
    add("input", help="prompts JSONL (the rows you will collect from); local path or fsspec URL")
    add("--model-url", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    add("--model", required=True, help="model name sent with each request")
    add("--api", choices=["chat", "responses"], default="chat", help="Chat Completions or Responses API (default chat)")
    add("--api-key-env", metavar="VAR", help="environment variable that holds the API key")
    add("--start", type=int, default=8, help="first --parallel step (default 8)")
    add("--max-parallel", type=int, default=1024, help="largest step (default 1024)")
    add("--step-seconds", type=float, default=10.0, help="time bound of each step (default 10)")
    add("--step-requests", type=int, help="request bound of each step (default max(200, 20 x parallel))")
    add("--sample", type=int, default=256, help="prompts to use, from the start of INPUT, cycled (default 256)")
    add("--temperature", type=float, help="sampling temperature sent with each request")
    add("--max-output-tokens", type=int, help="output token limit per request")
    add("--request-timeout", type=float, default=120.0, help="seconds per request; a timeout counts as an error (default 120)")
    add("--gain", type=float, default=0.10, help="smallest throughput gain per doubling that is worth it (default 0.10)")
    add("--out", default="./tune", help="where tune.csv, tune.json and tune.png go (default ./tune)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 1 <= args.start <= args.max_parallel:
            raise ConfigError(f"need 1 <= --start ({args.start}) <= --max-parallel ({args.max_parallel})")
        if args.step_seconds <= 0 or args.sample < 1:
            raise ConfigError("--step-seconds must be positive and --sample at least 1")
        api_key = None
        if args.api_key_env:
            api_key = os.environ.get(args.api_key_env) or None
            if api_key is None:
                raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
        model_url = args.model_url.rstrip("/")
        check_endpoint(model_url, api_key)
        prompts = load_prompts(args.input, args.sample)
        sampling = {k: v for k, v in (("temperature", args.temperature), ("max_output_tokens", args.max_output_tokens))
                    if v is not None}
        print(f"tuning --parallel against {model_url} with {len(prompts)} prompts, "
              f"steps of <= {args.step_seconds:g} s", file=sys.stderr)
        steps, index, reason = asyncio.run(sweep(
            model_url, args.model, prompts, api=args.api, api_key=api_key, start=args.start,
            max_parallel=args.max_parallel, step_seconds=args.step_seconds, step_requests=args.step_requests,
            request_timeout=args.request_timeout, sampling=sampling, rule=KneeRule(gain=args.gain),
            report=lambda s: print(f"  parallel {s.parallel:>5}: {s.throughput:8.1f} req/s, p50 {s.p50_ms or 0:.0f} ms, "
                                   f"p95 {s.p95_ms or 0:.0f} ms, errors {s.error_rate:.1%}", file=sys.stderr)))
    except RolloutsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if all(s.ok == 0 for s in steps):
        print(f"error: no request succeeded (errors: {steps[0].errors})", file=sys.stderr)
        return 1
    recommended = steps[index].parallel
    files = write_results(args.out, steps, recommended, reason, vars(args) | {"model_url": model_url})
    print(table(steps))
    print(f"\nuse --parallel {recommended} ({reason})")
    print("wrote " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

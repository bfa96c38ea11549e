"""Benchmark: `rollouts tune` and `--parallel auto` against simulated servers with known knees.

    python bench/tune_parallelism.py                      # all three scenarios (~12 minutes)
    python bench/tune_parallelism.py --scenario capacity-32 --auto-seconds 40

Scenarios (the simulated server on loopback):
    capacity-32    200 ms latency, latency grows above 32 in flight      (knee 32, ceiling 160 req/s)
    capacity-256   1000 ms latency, latency grows above 256 in flight    (knee 256, ceiling 256 req/s)
    rate-limit     500 ms latency, 429 + Retry-After above 300 req/s     (knee 150 in flight, ceiling 300 req/s)
Shapes the controller's tests never replay (tests/fixtures/tune holds the three above):
    gpu-48         100 ms, above 48 in flight latency x (in_flight/48)^1.5: throughput peaks at 48 and falls beyond
    rate-limit-200 300 ms latency, a hard 200 req/s limit (429, Retry-After: 2)  (knee 60 in flight)
    linear-latency 200 ms + 2 ms per request in flight: throughput rises ever more slowly towards 500 req/s
    gpu-48-slow, linear-latency-slow   the same at 300 ms and 600 ms + 6 ms per request (ceilings 160, 167 req/s),
                   for a machine whose client cannot make 450 req/s

With --rollouts N[,M]: every run (each fixed setting, and auto) makes exactly N rollouts and is measured from start
to its last answer, so the controller's convergence counts; auto's rate is divided by the best fixed one's, and the
overshoot is the controller's highest limit over the knee.

    python bench/tune_parallelism.py --rollouts 10000,2000 --scenario gpu-48 --scenario rate-limit-200 \
        --scenario linear-latency
    python bench/tune_parallelism.py --rollouts 10000,2000 --model    # the same in virtual time (~10 s)

The controller runs as `rollouts collect --parallel auto` does by default (--min-parallel 8, --initial-parallel 32,
--max-parallel 1024). With --model every run is made against the servers' load model in virtual time
(rollouts/tune/virtual.py, latency jitter 10 %): no client CPU and no other jobs in the way, so the figures say what
the controller does, and on a loaded machine they are the ones to compare with.

For each: the tune sweep's recommendation; the collector's core loop (ModelClient with retries + the in-flight
limiter, as `rollouts collect` runs it, without Prefect) at fixed settings (knee, 2x, 4x) and with the AIMD
controller; and a bare aiohttp client at the knee as the machine's baseline. Steady throughput is that of the last
`--steady-seconds` of each run, fixed or auto alike, so neither a token bucket's initial burst nor a ramp favours
one. The controller "converges" when its rolling 5 s throughput first reaches 0.9 of the best fixed setting's.

    python bench/tune_parallelism.py --record-sweeps tests/fixtures/tune   # the traces the unit tests replay
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rollouts.client.model import ModelClient  # noqa: E402
from rollouts.collector.limits import InflightLimiter  # noqa: E402
from rollouts.config import ConcurrencyConfig  # noqa: E402
from rollouts.errors import ProviderError  # noqa: E402
from rollouts.sim.launch import start_sim_server  # noqa: E402
from rollouts.sim.server import SimConfig  # noqa: E402
from rollouts.tune.aimd import AttemptLog, AutoParallel, ControllerConfig, observed_http_client  # noqa: E402
from rollouts.tune.sweep import TuneConfig, sweep  # noqa: E402
from rollouts.tune.virtual import compare, converged_at  # noqa: E402

SCENARIOS = {
    "capacity-32": dict(server=dict(latency_ms=200, capacity=32), knee=32, ceiling=160.0),
    "capacity-256": dict(server=dict(latency_ms=1000, capacity=256), knee=256, ceiling=256.0),
    "rate-limit": dict(server=dict(latency_ms=500, rate_limit_rps=300, retry_after_s=1), knee=150, ceiling=300.0),
    "gpu-48": dict(
        server=dict(latency_ms=100, capacity=48, capacity_exponent=1.5), knee=48, ceiling=480.0, fixed=(48, 96, 256)
    ),
    "rate-limit-200": dict(
        server=dict(latency_ms=300, rate_limit_rps=200, retry_after_s=2), knee=60, ceiling=200.0, fixed=(60, 120, 256)
    ),
    "linear-latency": dict(
        server=dict(latency_ms=200, latency_per_request_ms=2), knee=512, ceiling=500.0, fixed=(256, 512, 1024)
    ),
    # the same two shapes three times slower: ceilings (160 and 167 req/s) a 2-core machine's client can reach
    "gpu-48-slow": dict(
        server=dict(latency_ms=300, capacity=48, capacity_exponent=1.5), knee=48, ceiling=160.0, fixed=(48, 96, 256)
    ),
    "linear-latency-slow": dict(
        server=dict(latency_ms=600, latency_per_request_ms=6), knee=512, ceiling=167.0, fixed=(256, 512, 1024)
    ),
}
PROMPTS = [{"input": f"What is {i} + {i + 7}?"} for i in range(512)]
SAMPLING = {"temperature": 0.7}


def tune_config(url: str, step_seconds: float) -> TuneConfig:
    """`rollouts tune`'s options for a sweep from 8 to 1024 over PROMPTS (the input is already in memory)."""
    return TuneConfig(
        input="bench-prompts",
        model_url=url,
        model="sim-model",
        start=8,
        max_parallel=1024,
        step_seconds=step_seconds,
        temperature=SAMPLING["temperature"],
    )


async def core_loop(
    url: str,
    seconds: float,
    *,
    fixed: int | None,
    config: ControllerConfig,
    max_retries: int = 4,
    count: int | None = None,
) -> dict:
    """Rollouts through ModelClient + InflightLimiter for `seconds` (or until `count` were made); a controller drives
    the limit unless `fixed`."""
    limit = fixed or config.max_parallel
    log = AttemptLog()
    limiter = InflightLimiter(fixed or config.start)
    done: list[float] = []
    failed: list[float] = []
    prompts = itertools.cycle(PROMPTS)
    deadline = time.monotonic() + seconds
    issued = 0
    async with observed_http_client(limit, 60.0, None, log, url) as http:
        client = ModelClient(http, url, "sim-model", "chat", max_retries=max_retries)
        auto = AutoParallel(limiter, config, log).start() if fixed is None else None
        t0 = time.monotonic()

        async def worker() -> None:
            nonlocal issued
            while time.monotonic() < deadline and (count is None or issued < count):
                params = next(prompts)
                await limiter.acquire()
                if count is not None and issued >= count:
                    limiter.release()
                    break
                issued += 1
                try:
                    await client.create([{"role": "user", "content": params["input"]}], params, SAMPLING)
                    done.append(time.monotonic() - t0)
                except ProviderError:
                    failed.append(time.monotonic() - t0)
                finally:
                    limiter.release()

        workers = [asyncio.ensure_future(worker()) for _ in range(limit)]
        await asyncio.wait(workers, timeout=seconds + 30)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if auto is not None:
            await auto.stop()
    return {
        "done": done,
        "failed": failed,
        "trace": auto.trace if auto else [],
        "wall": max([*done, *failed], default=0.0),
        "t0_wall": time.time() - (time.monotonic() - t0),
    }


def rate(times: list[float], start: float, end: float) -> float:
    return sum(start <= t < end for t in times) / (end - start) if end > start else 0.0


async def bare_client(url: str, parallel: int, seconds: float) -> float:
    """Requests/s of a bare aiohttp client at `parallel` in flight: what the machine allows, for the ratio."""
    import aiohttp

    count, deadline = 0, time.monotonic() + seconds
    prompts = itertools.cycle(PROMPTS)
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            body = {"model": "sim-model", "messages": [{"role": "user", "content": next(prompts)["input"]}], **SAMPLING}
            async with session.post(f"{url}/chat/completions", json=body) as response:
                await response.read()
                count += response.status == 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=parallel)) as session:
        await asyncio.gather(*(worker(session) for _ in range(parallel)))
    return count / (time.monotonic() - started)


def auto_config() -> ControllerConfig:
    """`--parallel auto` as `rollouts collect` runs it by default (--min/--initial/--max-parallel)."""
    c = ConcurrencyConfig(parallel="auto")
    return ControllerConfig(min_parallel=c.min_parallel, max_parallel=c.max_parallel, initial=c.initial_parallel)


async def scenario(name: str, spec: dict, args: argparse.Namespace) -> dict:
    config = auto_config()
    knee = spec["knee"]
    with start_sim_server(seed=0, **spec["server"]) as server:
        steps, index, reason = await sweep(tune_config(server.url, args.step_seconds), PROMPTS)
        recommended = steps[index].parallel
        bare = await bare_client(server.url, knee, args.fixed_seconds / 2)
        fixed = {}
        for parallel in spec.get("fixed", (knee, 2 * knee, 4 * knee)):
            result = await core_loop(server.url, args.fixed_seconds, fixed=parallel, config=config)
            fixed[parallel] = (
                rate(result["done"], args.fixed_seconds - args.steady_seconds, args.fixed_seconds),
                len(result["failed"]) / max(1, len(result["done"]) + len(result["failed"])),
            )
        best_parallel = max(fixed, key=lambda p: fixed[p][0])
        best = fixed[best_parallel][0]
        auto = await core_loop(server.url, args.auto_seconds, fixed=None, config=config)
    steady_from = args.auto_seconds - args.steady_seconds
    steady = rate(auto["done"], steady_from, args.auto_seconds)
    total = len(auto["done"]) + len(auto["failed"])
    limits = [row["limit"] for row in auto["trace"] if row["limit"] and row["t"] - auto["t0_wall"] >= steady_from]
    return {
        "name": name,
        "knee": knee,
        "ceiling": spec["ceiling"],
        "recommended": recommended,
        "reason": reason,
        "within_one_doubling": knee / 2 <= recommended <= knee * 2,
        "bare": bare,
        "fixed": fixed,
        "best_parallel": best_parallel,
        "best": best,
        "auto_steady": steady,
        "ratio": steady / best if best else 0.0,
        "converged_s": converged_at(auto["done"], best, args.auto_seconds),
        "auto_failure_fraction": len(auto["failed"]) / total if total else 0.0,
        "auto_limits": (min(limits), max(limits)) if limits else None,
        "trace": auto["trace"],
        "steps": steps,
    }


async def counted(name: str, spec: dict, count: int, args: argparse.Namespace) -> dict:
    """Every fixed setting and auto make exactly `count` rollouts; rates over the whole run, start-up included."""
    config = auto_config()
    knee = spec["knee"]
    cap = max(600.0, 20 * count / spec["ceiling"])
    with start_sim_server(seed=0, **spec["server"]) as server:
        fixed = {}
        for parallel in spec.get("fixed", (knee, 2 * knee, 4 * knee)):
            result = await core_loop(server.url, cap, fixed=parallel, config=config, count=count)
            fixed[parallel] = (len(result["done"]) / result["wall"], len(result["failed"]) / count)
        auto = await core_loop(server.url, cap, fixed=None, config=config, count=count)
    best_parallel = max(fixed, key=lambda p: fixed[p][0])
    best = fixed[best_parallel][0]
    rate_auto = len(auto["done"]) / auto["wall"]
    t0 = auto["t0_wall"]
    limits = [(row["t"] - t0, row["limit"]) for row in auto["trace"] if row["limit"]]
    return {
        "name": name,
        "count": count,
        "knee": knee,
        "fixed": fixed,
        "best_parallel": best_parallel,
        "best": best,
        "auto": rate_auto,
        "ratio": rate_auto / best if best else 0.0,
        "converged_s": converged_at(auto["done"], best, auto["wall"]),
        "overshoot": max(limit for _, limit in limits) / knee if limits else 0.0,
        "auto_failure_fraction": len(auto["failed"]) / count,
        "auto_limits": sorted({limit for t, limit in limits if t >= auto["wall"] / 2}),
        "trace": auto["trace"],
        "wall": auto["wall"],
    }


def modelled(name: str, spec: dict, count: int) -> dict:
    """The same comparison in virtual time against the server's load model (rollouts/tune/virtual.py): no machine in
    the way, so it says what the controller does, not what the machine lets it do. Latency jitter 10 %."""
    fixed = spec.get("fixed", (spec["knee"], 2 * spec["knee"], 4 * spec["knee"]))
    c = compare(SimConfig(**spec["server"]), count, fixed, spec["knee"], auto_config(), jitter=0.1)
    return {
        "name": name,
        "count": count,
        "knee": spec["knee"],
        "fixed": {p: (run.rate, run.failed / count) for p, run in c.fixed.items()},
        "best_parallel": c.best_parallel,
        "best": c.best,
        "auto": c.auto.rate,
        "ratio": c.ratio,
        "converged_s": c.converged_s,
        "overshoot": c.overshoot,
        "auto_failure_fraction": c.auto.failed / count,
        "auto_limits": sorted({row["limit"] for row in c.auto.trace if row["t"] >= c.auto.wall / 2}),
        "trace": c.auto.trace,
        "wall": c.auto.wall,
    }


def print_counted(results: list[dict], trace: bool) -> None:
    print(
        f"{'scenario':>15} {'rollouts':>8} {'knee':>5} {'best fixed':>14} {'auto r/s':>8} {'auto/best':>9} "
        f"{'converged s':>11} {'overshoot':>9} {'auto fail':>9} {'auto wall s':>11}"
    )
    for r in results:
        converged = f"{r['converged_s']:.1f}" if r["converged_s"] is not None else "never"
        print(
            f"{r['name']:>15} {r['count']:>8} {r['knee']:>5} {r['best']:>8.1f} @{r['best_parallel']:<5} "
            f"{r['auto']:>8.1f} {r['ratio']:>9.2f} {converged:>11} {r['overshoot']:>9.2f} "
            f"{r['auto_failure_fraction']:>9.2%} {r['wall']:>11.1f}"
        )
    for r in results:
        fixed = ", ".join(f"{p}: {thr:.1f} r/s ({fail:.1%} failed)" for p, (thr, fail) in sorted(r["fixed"].items()))
        late = r["auto_limits"]
        print(f"{r['name']} x {r['count']}: fixed {fixed}; auto's limits in its second half {late[:1]}..{late[-1:]}")
        if trace:
            t0 = r["trace"][0]["t"] if r["trace"] else 0.0
            for row in r["trace"]:
                print(f"  {row['t'] - t0:6.1f} s  limit {row['limit']:>5}  {row['phase']:>6}  {row['reason']}")
    ok = all(r["ratio"] >= 0.95 and r["auto_failure_fraction"] <= 0.05 for r in results)
    print("targets met (auto >= 0.95 of the best fixed setting)" if ok else "targets NOT met")


async def record_sweep(name: str, spec: dict, folder: Path, step_seconds: float) -> None:
    """Every doubling from 8 to 1024, knee or not: the recorded traces the controller's tests replay."""
    import json
    from dataclasses import asdict

    with start_sim_server(seed=0, **spec["server"]) as server:
        steps, index, reason = await sweep(tune_config(server.url, step_seconds), PROMPTS, stop_at_knee=False)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "scenario": name,
        "server": spec["server"],
        "knee": spec["knee"],
        "step_seconds": step_seconds,
        "recorded_with": f"python bench/tune_parallelism.py --record-sweeps {folder} --scenario {name}",
        "steps": [asdict(s) for s in steps],
    }
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"{name}: {[(s.parallel, s.throughput, s.p95_ms, s.error_rate) for s in steps]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    parser.add_argument("--step-seconds", type=float, default=5.0, help="tune: time bound per step")
    parser.add_argument("--fixed-seconds", type=float, default=40.0, help="each fixed setting's run")
    parser.add_argument("--auto-seconds", type=float, default=60.0, help="the controller's run")
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=30.0,
        help="steady throughput: the last this many seconds of every run, fixed or auto",
    )
    parser.add_argument(
        "--record-sweeps", metavar="DIR", help="only record a full sweep (8..1024) per scenario as JSON"
    )
    parser.add_argument("--max-failure-fraction", type=float, default=0.05)
    parser.add_argument("--rollouts", help="N[,M]: every run makes exactly this many rollouts (see above)")
    parser.add_argument("--trace", action="store_true", help="print the controller's decisions")
    parser.add_argument(
        "--model",
        action="store_true",
        help="with --rollouts: run against the servers' load model in virtual time instead (seconds, no machine)",
    )
    args = parser.parse_args()
    if args.record_sweeps:
        for name in args.scenario or ["capacity-32", "capacity-256", "rate-limit"]:
            asyncio.run(record_sweep(name, SCENARIOS[name], Path(args.record_sweeps), args.step_seconds))
        return
    if args.rollouts:
        names = args.scenario or ["gpu-48", "rate-limit-200", "linear-latency"]
        counts = [int(n) for n in args.rollouts.split(",")]
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        counted_results = []
        for count in counts:
            for name in names:
                if args.model:
                    counted_results.append(modelled(name, SCENARIOS[name], count))
                else:
                    counted_results.append(asyncio.run(counted(name, SCENARIOS[name], count, args)))
                    print(f"load average {os.getloadavg()[0]:.1f}")
                print_counted(counted_results[-1:], False)
        print("\nall:")
        print_counted(counted_results, args.trace)
        return
    names = args.scenario or ["capacity-32", "capacity-256", "rate-limit"]
    results = [asyncio.run(scenario(name, SCENARIOS[name], args)) for name in names]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"fixed runs {args.fixed_seconds:g} s, auto {args.auto_seconds:g} s, "
        f"steady = the last {args.steady_seconds:g} s"
    )
    print(
        f"{'scenario':>13} {'knee':>5} {'tune':>5} {'ceiling':>8} {'bare/ceil':>9} {'best fixed':>14} "
        f"{'auto r/s':>8} {'auto/best':>9} {'converged s':>11} {'auto fail':>9} {'auto limit':>11}"
    )
    for r in results:
        limits = f"{r['auto_limits'][0]}-{r['auto_limits'][1]}" if r["auto_limits"] else "-"
        converged = f"{r['converged_s']:.1f}" if r["converged_s"] is not None else "never"
        print(
            f"{r['name']:>13} {r['knee']:>5} {r['recommended']:>5} {r['ceiling']:>8.0f} "
            f"{r['bare'] / r['ceiling']:>9.2f} "
            f"{r['best']:>8.1f} @{r['best_parallel']:<5} {r['auto_steady']:>8.1f} {r['ratio']:>9.2f} {converged:>11} "
            f"{r['auto_failure_fraction']:>9.2%} {limits:>11}"
        )
    for r in results:
        fixed = ", ".join(f"{p}: {thr:.1f} r/s ({fail:.1%} failed)" for p, (thr, fail) in sorted(r["fixed"].items()))
        print(f"{r['name']}: tune -> {r['recommended']} ({r['reason']}); fixed {fixed}")
        if args.trace:
            t0 = r["trace"][0]["t"] if r["trace"] else 0.0
            for row in r["trace"]:
                print(
                    f"  {row['t'] - t0:6.1f} s  limit {row['limit']:>5}  {row['phase']:>6}  {row['reason']}"
                    + (
                        f"  ({row['throughput']:.0f} r/s, p50 {row['p50_ms'] or 0:.0f} ms, "
                        f"err {row['error_fraction']:.1%})"
                        if "throughput" in row
                        else ""
                    )
                )
    ok = all(
        r["ratio"] >= 0.9
        and r["converged_s"] is not None
        and r["converged_s"] <= 30
        and r["auto_failure_fraction"] <= args.max_failure_fraction
        and r["within_one_doubling"]
        for r in results
    )
    print("targets met" if ok else "targets NOT met")


if __name__ == "__main__":
    main()

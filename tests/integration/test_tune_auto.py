"""Tuning against the simulated server over loopback: the rate limit, `rollouts tune`, the controller, `--profile`."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import polars as pl
import pytest

from commands.tune import main as tune_main
from rollouts.client.model import ModelClient
from rollouts.collector.limits import InflightLimiter
from rollouts.config import CollectConfig
from rollouts.report.metrics import ProfileOptions
from rollouts.report.profiler import function_profile
from rollouts.report.svg import NAMESPACE
from rollouts.run import run_store
from rollouts.sim.launch import start_sim_server
from rollouts.stages.inline import collect_plan
from rollouts.stages.profile import profile_run
from rollouts.stages.shard import plan_run
from rollouts.storage import Store
from rollouts.tune.aimd import AttemptLog, AutoParallel, ControllerConfig, observed_http_client, read_trace, write_trace
from rollouts.tune.sweep import TuneConfig
from tests.integration.conftest import math_rows, write_jsonl

SVG = f"{{{NAMESPACE}}}"  # an SVG element's tag, as ElementTree reads it

pytestmark = pytest.mark.integration


async def test_rate_limit_answers_429_with_retry_after_above_the_rate() -> None:
    with start_sim_server(latency_ms=0, rate_limit_rps=20, retry_after_s=3) as server:
        body = {"model": "m", "messages": [{"role": "user", "content": "What is 1 + 1?"}]}
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=60)) as http:
            replies = await asyncio.gather(*(http.post(f"{server.url}/chat/completions", json=body) for _ in range(60)))
        stats = server.stats()
    limited = [r for r in replies if r.status_code == 429]
    assert sum(r.status_code == 200 for r in replies) >= 20  # the bucket holds one second of requests
    assert len(limited) >= 15 and {r.headers["retry-after"] for r in limited} == {"3"}
    assert limited[0].json()["error"]["type"] == "rate_limit_error"
    assert stats["faults"]["rate_limit_rps"] == len(limited)


def test_tune_recommends_the_capacity_knee_and_writes_its_files(tmp_path: Path, capsys) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(40))
    with start_sim_server(latency_ms=40, capacity=16, seed=0) as server:
        code = tune_main(
            [
                str(src),
                "--model-url",
                server.url,
                "--model",
                "sim-model",
                "--start",
                "4",
                "--max-parallel",
                "64",
                "--step-seconds",
                "0.6",
                "--out",
                str(tmp_path / "tune"),
            ]
        )
    assert code == 0
    result = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert 8 <= result["recommended_parallel"] <= 32
    steps = pl.read_csv(tmp_path / "tune" / "tune.csv")
    assert steps["parallel"].to_list()[:3] == [4, 8, 16] and steps["chosen"].sum() == 1
    chart = ET.fromstring((tmp_path / "tune" / "tune.svg").read_bytes())
    assert chart.tag == SVG + "svg" and "rollouts tune: use --parallel" in "".join(chart.itertext())
    assert (
        result["settings"]
        == TuneConfig(
            input=str(src),
            model_url=server.url,
            model="sim-model",
            start=4,
            max_parallel=64,
            step_seconds=0.6,
            out=str(tmp_path / "tune"),
        ).model_dump()
    )
    assert f"use --parallel {result['recommended_parallel']}" in capsys.readouterr().out


def test_tune_refuses_bad_options_with_a_clear_message(tmp_path: Path, capsys) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    assert (
        tune_main(
            [str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--start", "64", "--max-parallel", "8"]
        )
        == 2
    )
    assert "--start (64) <= --max-parallel (8)" in capsys.readouterr().err
    assert tune_main([str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m"]) == 2
    assert "cannot reach the model server" in capsys.readouterr().err
    assert tune_main([str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--sample", "0"]) == 2
    assert capsys.readouterr().err == "error: --sample: Input should be greater than or equal to 1\n"
    assert tune_main([str(tmp_path / "nope.jsonl"), "--model-url", "http://127.0.0.1:9/v1", "--model", "m"]) == 2
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error for a value of the wrong type
        tune_main([str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--start", "x"])
    assert exit_.value.code == 2 and "--start: invalid int value" in capsys.readouterr().err


def test_tune_exits_1_and_writes_nothing_when_no_request_succeeds(tmp_path: Path, capsys) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(4))
    with start_sim_server(latency_ms=1, fail_rate=1.0, seed=0) as server:
        code = tune_main(
            [
                str(src),
                "--model-url",
                server.url,
                "--model",
                "sim-model",
                "--start",
                "2",
                "--max-parallel",
                "4",
                "--step-seconds",
                "0.3",
                "--out",
                str(tmp_path / "tune"),
            ]
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "error: no request succeeded (errors: {'5xx': " in err and "Traceback" not in err
    assert not (tmp_path / "tune").exists()


async def test_auto_parallel_finds_the_knee_and_records_its_trace(tmp_path: Path) -> None:
    with start_sim_server(latency_ms=50, capacity=16, seed=0) as server:
        log, limiter = AttemptLog(), InflightLimiter(1)
        config = ControllerConfig(min_parallel=2, max_parallel=128)
        async with observed_http_client(128, 30.0, None, log, server.url) as http:
            client = ModelClient(http, server.url, "sim-model", "chat", max_retries=2)
            auto = AutoParallel(limiter, config, log, min_window_s=0.3).start()
            stop = asyncio.Event()

            async def worker(i: int) -> None:
                while not stop.is_set():
                    await limiter.acquire()
                    try:
                        await client.create([{"role": "user", "content": f"What is {i} + 1?"}], {}, {})
                    finally:
                        limiter.release()

            workers = [asyncio.ensure_future(worker(i)) for i in range(128)]
            await asyncio.sleep(5)
            stop.set()
            await asyncio.gather(*workers)
            await auto.stop()
    reasons = [row["reason"] for row in auto.trace]
    assert reasons[0] == "start" and "double" in reasons and reasons[-1] == "stopped"
    assert any(r.startswith("knee") for r in reasons)
    steady = [row["limit"] for row in auto.trace if row["phase"] == "steady" and row["limit"]]
    assert steady and all(4 <= limit <= 64 for limit in steady)  # around the server's 16, within the bounds
    store = Store(str(tmp_path))
    write_trace(store, auto.trace, part="p1")
    trace = read_trace(store)
    assert trace is not None and trace["limit"].to_list() == [row["limit"] for row in auto.trace]


def test_profiled_collection_has_a_function_table(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(24))
    with start_sim_server(latency_ms=5, seed=0) as server:
        config = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=server.url,
            model="sim-model",
            num_repeats=2,
            parallel=8,
            shard_size=12,
            run_name="prof",
            seed=1,
        )
        plan = plan_run(config)
        store = run_store(plan.run)

        async def collect() -> None:
            await collect_plan(plan)

        with function_profile(True, store, slice_s=0.2):
            asyncio.run(collect())
    result = profile_run(store, ProfileOptions())
    functions = pl.read_csv(Path(plan.run.run_url) / "profile" / "functions.csv")
    assert functions.columns[:7] == ["function", "module", "line", "wall_ncall", "wall_tsub", "wall_ttot", "wall_tavg"]
    scored = functions.filter(pl.col("function") == "MathEnvironment.score")
    assert scored.height == 1 and scored["wall_ncall"][0] + scored["cpu_ncall"][0] > 0
    assert functions["wall_ttot"].to_list() == sorted(functions["wall_ttot"].to_list(), reverse=True)
    assert "function-profile" in {a.key for a in result.artifacts}
    assert "## Functions (`--profile`)" in (Path(plan.run.run_url) / "profile" / "report.md").read_text()


async def test_parallel_control_auto_and_fixed_leave_a_trace_for_the_timeline(tmp_path: Path) -> None:
    from rollouts.tune.control import ParallelControl

    store = Store(str(tmp_path))
    with start_sim_server(latency_ms=30, capacity=8, seed=0) as server:
        control = ParallelControl("auto", model_url=server.url, request_timeout=30.0, min_parallel=2, max_parallel=64)
        assert (control.limiter.limit, control.pool_size, control.workers) == (2, 64, 64)
        async with control.http_client() as http:
            control.start(http)  # the simulated server has no /metrics: client-side signals only
            client = ModelClient(http, server.url, "sim-model", "chat", max_retries=2)
            stop = asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    await control.limiter.acquire()
                    try:
                        await client.create([{"role": "user", "content": "What is 2 + 2?"}], {}, {})
                    finally:
                        control.limiter.release()

            workers = [asyncio.ensure_future(worker()) for _ in range(control.workers)]
            await asyncio.sleep(3)
            stop.set()
            await asyncio.gather(*workers)
            trace = await control.stop(store)
    assert trace[-1]["limit"] == 0 and max(row["limit"] for row in trace) > 2
    assert control.log is not None and len(control.log.events) > 0
    fixed = ParallelControl(16, model_url="http://127.0.0.1:9/v1", request_timeout=5.0)
    assert (fixed.limiter.limit, fixed.pool_size, fixed.log) == (16, 16, None)
    fixed.start()
    assert [row["limit"] for row in await fixed.stop(store)] == [16, 0]
    assert read_trace(store)["process"].n_unique() == 2
    with pytest.raises(ValueError):
        ParallelControl(0, model_url="http://x/v1", request_timeout=1.0)

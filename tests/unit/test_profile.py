"""The run profile from rollout rows written to a real run directory: latency, timeline, tokens, cost, pass@k,
report."""

from __future__ import annotations

import base64
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rollouts.report.histogram import histogram
from rollouts.report.metrics import ProfileOptions, pass_at_k_rows, profile_frame, read_run_frame, window_for
from rollouts.report.svg import NAMESPACE
from rollouts.stages.profile import profile_run
from rollouts.storage import Store
from rollouts.tune.aimd import write_trace

SVG = f"{{{NAMESPACE}}}"  # an SVG element's tag, as ElementTree reads it

T0 = 1_700_000_000.0


def row(
    task: int,
    index: int,
    reward: float | None,
    *,
    start: float,
    seconds: float,
    env: str = "math",
    status: str = "ok",
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A rollout row as the collector writes it (the fields the profile reads, and a few it must ignore)."""
    ms = seconds * 1000
    return {
        "responses_create_params": {"input": f"q{task}"},
        "agent_ref": {"name": env},
        "_ng_task_index": task,
        "_ng_rollout_index": index,
        "rollout_id": f"{task}-{index}",
        "status": status,
        "reward": reward,
        "error": error,
        "attempts": 1,
        "response": None
        if status != "ok"
        else {
            "output": output
            or [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "\\boxed{1}"}]}],
            "usage": usage or {"input_tokens": 10, "output_tokens": 20},
        },
        "timings": {
            "queue_ms": 1.0,
            "model_ms": ms,
            "tool_ms": 0.0,
            "generate_ms": ms,
            "verify_ms": 0.5,
            "total_ms": ms + 1.5,
            "started_at": T0 + start,
            "finished_at": T0 + start + seconds,
            **(timings or {}),
        },
    }


def write_run(tmp_path: Path, rows: list[dict[str, Any]], failed: list[dict[str, Any]] = ()) -> Store:
    store = Store(str(tmp_path / "run"))
    store.write_lines((json.dumps(r) for r in rows), "rollouts", "00000.jsonl")
    store.write_lines((json.dumps(r) for r in failed), "failures", "00000.jsonl")
    return store


def test_histogram_counts_few_values_and_bins_many() -> None:
    assert histogram(pl.Series([0.0, 1.0, 1.0, None])) == [(0.0, 0.0, 1), (1.0, 1.0, 2)]
    binned = histogram(pl.Series([i / 100 for i in range(10, 60)]), unit_range=True)
    assert [b[:2] for b in binned[:2]] == [(0.0, 0.1), (0.1, 0.2)] and sum(b[2] for b in binned) == 50
    assert histogram(pl.Series([], dtype=pl.Float64)) == []


def test_pass_at_k_matches_the_unbiased_estimator() -> None:
    # prompt 0: 4 rollouts, 1 pass; prompt 1: 4 rollouts, 3 pass; prompt 2: 2 rollouts, 2 pass
    rewards = {0: [1, 0, 0, 0], 1: [1, 1, 1, 0], 2: [1, 1]}
    rows = pl.DataFrame(
        [{"status": "ok", "reward": float(r), "task": t, "env": "math"} for t, rs in rewards.items() for r in rs]
    )
    by_k = {r["k"]: r for r in pass_at_k_rows(rows)}
    assert sorted(by_k) == [1, 2, 4]

    def at_k(n: int, c: int, k: int) -> float:
        return 1 - math.comb(n - c, k) / math.comb(n, k)

    assert by_k[2]["prompts"] == 3 and by_k[4]["prompts"] == 2  # prompt 2 has only n=2
    assert by_k[2]["pass_at_k"] == pytest.approx((at_k(4, 1, 2) + at_k(4, 3, 2) + at_k(2, 2, 2)) / 3, abs=1e-6)
    assert by_k[2]["pass_pow_k"] == pytest.approx((0 + math.comb(3, 2) / math.comb(4, 2) + 1) / 3, abs=1e-6)
    assert by_k[4]["pass_at_k"] == pytest.approx(1.0) and by_k[4]["pass_pow_k"] == pytest.approx(0.0)
    assert (
        by_k[1]["pass_at_k"]
        == by_k[1]["pass_pow_k"]
        == by_k[1]["mean_at_k"]
        == pytest.approx((0.25 + 0.75 + 1) / 3, abs=1e-6)
    )
    assert (by_k[4]["n_min"], by_k[4]["n_max"]) == (4, 4)


def test_profile_of_a_written_run(tmp_path: Path) -> None:
    # 40 rollouts over 103 s, 2 s each, one starting every 2.6 s: 2/2.6 in flight on average, 1 at most.
    rows = [
        row(
            i // 4,
            i % 4,
            float(i % 2),
            start=2.6 * i,
            seconds=2.0,
            usage={
                "input_tokens": 100,
                "output_tokens": 50,
                "input_tokens_details": {"cached_tokens": 40},
                "output_tokens_details": {"reasoning_tokens": 7},
            },
        )
        for i in range(40)
    ]
    failed = [
        row(
            99,
            0,
            None,
            start=50.0,
            seconds=0.5,
            status="failed",
            error={"type": "ProviderError", "message": "HTTP 429", "status_code": 429, "stage": "generate"},
        )
    ]
    store = write_run(tmp_path, rows, failed)
    profile = profile_frame(read_run_frame(store), ProfileOptions(price_input=1.0, price_output=4.0))
    assert (profile["rollouts"], profile["failed"]) == (40, 1)
    assert profile["tokens"] == {
        "input": 4000,
        "output": 2000,
        "cached": 1600,
        "reasoning": 280,
        "cached_reported": 40,
        "reasoning_reported": 40,
    }
    assert profile["cost"]["total"] == pytest.approx(4000 * 1.0 / 1e6 + 2000 * 4.0 / 1e6)
    assert profile["timings_ms"]["model_ms"]["p50"] == pytest.approx(2000.0)
    assert profile["failures_by_type"] == [
        {"type": "ProviderError", "status_code": 429, "stage": "generate", "count": 1}
    ]
    timeline = profile["timeline"]
    assert [w["t_s"] for w in timeline] == [10.0 * i for i in range(11)]
    assert sum(w["rollouts"] for w in timeline) == 40
    assert timeline[0]["rollouts_per_s"] == pytest.approx(timeline[0]["rollouts"] / 10.0)
    assert sum(w["errors"] for w in timeline) == 1
    assert [w["in_flight_max"] for w in timeline] == [1] * 5 + [2] + [1] * 5  # the failed one overlaps at 50 s
    assert timeline[3]["in_flight_mean"] == pytest.approx(2 / 2.6, abs=0.05)
    assert profile["rewards"]["math"]["histogram"] == [
        {"lo": 0.0, "hi": 0.0, "count": 20},
        {"lo": 1.0, "hi": 1.0, "count": 20},
    ]


def test_per_call_latency_is_exact_when_recorded_and_estimated_otherwise(tmp_path: Path) -> None:
    tool_turns = [
        {"type": "function_call", "name": "search", "call_id": "a"},
        {"type": "function_call_output", "call_id": "a", "output": "x"},
        {"type": "function_call", "name": "lookup", "call_id": "b"},
        {"type": "function_call_output", "call_id": "b", "output": "y"},
        {"type": "message", "role": "assistant", "content": []},
    ]
    estimated = [row(0, 0, 1.0, start=0, seconds=3.0, output=tool_turns, timings={"tool_ms": 400.0})]
    profile = profile_frame(read_run_frame(write_run(tmp_path / "a", estimated)))
    latency = {(r["scope"], r["name"]): r for r in profile["latency"]}
    assert latency[("model_call", "all")]["count"] == 3 and latency[("model_call", "all")]["estimated"]
    assert latency[("model_call", "all")]["p50"] == pytest.approx(1000.0)
    assert latency[("tool", "search")]["p50"] == pytest.approx(200.0) and latency[("tool", "lookup")]["estimated"]
    exact = [
        row(
            0,
            0,
            1.0,
            start=0,
            seconds=3.0,
            output=tool_turns,
            timings={
                "tool_ms": 400.0,
                "model_calls_ms": [500.0, 1000.0, 1500.0],
                "tool_calls": [{"name": "search", "ms": 300.0}, {"name": "lookup", "ms": 100.0}],
            },
        )
    ]
    latency = {
        (r["scope"], r["name"]): r for r in profile_frame(read_run_frame(write_run(tmp_path / "b", exact)))["latency"]
    }
    assert latency[("model_call", "all")]["max"] == 1500.0 and not latency[("model_call", "all")]["estimated"]
    assert latency[("tool", "search")]["p50"] == 300.0 and not latency[("tool", "search")]["estimated"]
    assert ("environment", "math/total_ms") in latency


def test_short_runs_get_finer_windows() -> None:
    assert window_for(500.0) == 10.0 and window_for(30.0) == 2.0 and window_for(5.0) == 0.5


def test_profile_run_writes_files_charts_report_and_artifacts(tmp_path: Path) -> None:
    rows = [
        row(i // 4, i % 4, float(i % 3 == 0), start=0.5 * i, seconds=1.0, env="math" if i < 20 else "exact_match")
        for i in range(40)
    ]
    store = write_run(tmp_path, rows)
    write_trace(store, [{"t": T0, "limit": 8}, {"t": T0 + 6, "limit": 16}, {"t": T0 + 30, "limit": 0}], part="host-1")
    result = profile_run(store, ProfileOptions(price_input=0.5, price_output=2.0))
    folder = tmp_path / "run" / "profile"
    for name in (
        "profile.json",
        "timings.csv",
        "latency.csv",
        "timeline.csv",
        "errors.csv",
        "pass_at_k.csv",
        "throughput.svg",
        "latency_cdf.svg",
        "rewards.svg",
        "report.md",
    ):
        assert (folder / name).exists(), name
    throughput = ET.fromstring((folder / "throughput.svg").read_bytes())
    assert throughput.tag == SVG + "svg" and "Throughput per window" in throughput.itertext()
    timeline = pl.read_csv(folder / "timeline.csv")
    assert timeline["parallel"].to_list()[:2] == [8, 8] and timeline["parallel"].to_list()[-2] == 16
    assert json.loads((folder / "profile.json").read_text())["rollouts"] == 40
    report = (folder / "report.md").read_text()
    assert "![throughput over time](throughput.svg)" in report and "| math | 1 |" in report
    artifacts = {a.key: a for a in result.artifacts}
    assert list(artifacts)[0] == "run-report"
    embedded = artifacts["run-report"].markdown.split("(data:image/svg+xml;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(embedded) == (folder / "throughput.svg").read_bytes()
    assert artifacts["pass-at-k"].table[0]["env"] == "exact_match"
    assert "math: 20 rollouts" in artifacts["reward-histogram"].markdown


def test_profile_of_an_empty_run(tmp_path: Path) -> None:
    result = profile_run(write_run(tmp_path, []))
    assert result.profile["rollouts"] == 0 and result.profile["timeline"] == [] and result.profile["pass_at_k"] == []
    assert "No failed rollouts." in result.artifacts[0].markdown

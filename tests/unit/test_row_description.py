"""The stored row's one typed description (records.RolloutRow) covers every field the collector writes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typing_extensions
from typing_extensions import get_type_hints

from rollouts.config import CollectConfig
from rollouts.records import (
    RESERVED_KEYS,
    FailureRecord,
    OutputItem,
    Response,
    RolloutRow,
    Timings,
    ToolCallStats,
    Usage,
    validate_rollout,
)
from rollouts.sim import SimConfig, serve_in_thread
from rollouts.stages.inline import collect_plan
from rollouts.stages.shard import plan_run

DATA = Path(__file__).resolve().parents[2] / "rollouts" / "data"


def _fields(typed: Any) -> set[str]:
    assert typing_extensions.is_typeddict(typed)
    return set(get_type_hints(typed))


def _collect(tmp_path: Path) -> list[dict[str, Any]]:
    rows = [
        json.loads(line)
        for name in ("math_prompts.jsonl", "calculator_prompts.jsonl")
        for line in (DATA / name).read_text().splitlines()[:6]
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    url, stop = serve_in_thread(SimConfig(latency_ms=1, seed=5, fail_rate=0.2))
    try:
        config = CollectConfig(
            input=str(prompts),
            out=str(tmp_path / "runs"),
            model_url=url,
            model="sim-model",
            num_repeats=4,
            parallel=16,
            return_tokens=True,
            max_retries=0,
            seed=3,
        )
        plan = plan_run(config)
        asyncio.run(collect_plan(plan))
    finally:
        stop()
    run = Path(plan.run.run_url)
    return [
        json.loads(line)
        for folder in ("rollouts", "failures")
        for f in sorted((run / folder).glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def test_every_field_the_collector_writes_is_in_the_row_description(tmp_path: Path) -> None:
    written = _collect(tmp_path)
    assert {r["status"] for r in written} == {"ok", "failed"}  # both kinds of row were written
    assert any(r.get("timings", {}).get("tool_calls") for r in written)  # and tool rollouts among them
    assert _fields(RolloutRow) == set(RESERVED_KEYS)
    assert {r["token_source"] for r in written if r["status"] == "ok"} == {"vllm"}  # auto, settled by the sim
    for row in written:
        validate_rollout(row)
        assert set(row["timings"]) <= _fields(Timings), set(row["timings"]) - _fields(Timings)
        if row.get("error"):
            assert set(row["error"]) <= _fields(FailureRecord)
        for stats in (row.get("tool_stats") or {}).values():
            assert set(stats) <= _fields(ToolCallStats)
        response = row.get("response")
        if response:
            assert set(response) <= _fields(Response), set(response) - _fields(Response)
            assert set(response["usage"]) <= _fields(Usage)
            for item in response["output"]:
                assert set(item) <= _fields(OutputItem), set(item) - _fields(OutputItem)

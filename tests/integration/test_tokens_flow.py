"""A multi-turn tool run through the real collect flow with --return-tokens, then its token records per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from rollouts.sim.launch import start_sim_server
from rollouts.tokens import POLICIES, contiguity_metrics
from rollouts.tokens.check import calls_of
from rollouts.training import convert_token_records
from tests.integration.conftest import run_rows, write_jsonl
from tests.servers.resources_server import start_resources_server

pytestmark = pytest.mark.usefixtures("prefect_server", "board")
CALC_TOOL = {
    "type": "function",
    "name": "calculate",
    "description": "Evaluate arithmetic",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}
RUNS = {  # name: (sim options, api, expected break kind or None)
    "contiguous": ({"reasoning": False}, "chat", None),
    "turn-token": ({"reasoning": False, "drift_turn_token": True}, "chat", "retemplating"),
    "strip-think": ({"drift_strip_think": True}, "responses", "history_rewritten"),
}


def collect(tmp_path: Path, name: str) -> tuple[Path, list[dict[str, Any]]]:
    options, api, _ = RUNS[name]
    rows = [
        {
            "responses_create_params": {
                "input": [{"role": "user", "content": f"What is {a} * 3?"}],
                "tools": [CALC_TOOL],
            },
            "agent_ref": {"name": "calc"},
            "expected_answer": str(a * 3),
        }
        for a in (4, 11, 25)
    ]
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    with start_sim_server(latency_ms=2, seed=1, **options) as sim, start_resources_server() as gym:
        config = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=sim.url,
            model="sim-model",
            api=api,
            remote_env={"calc": gym.url},
            num_repeats=2,
            temperature=0.7,
            seed=3,
            run_name=name,
            return_tokens=True,
        )
        summary = collect_rollouts(config)
    assert summary.status == "completed"
    run = Path(summary.run_url)
    return run, run_rows(run, "rollouts")


@pytest.mark.integration
@pytest.mark.parametrize("name", list(RUNS))
def test_collected_tool_runs_are_checked_and_converted_under_every_policy(tmp_path: Path, name: str) -> None:
    run, rollouts = collect(tmp_path, name)
    kind = RUNS[name][2]
    metrics = contiguity_metrics(rollouts)
    assert metrics.with_token_ids == metrics.multi_call == 6
    assert metrics.contiguous == (6 if kind is None else 0)
    assert metrics.breaks_by_kind == ({} if kind is None else {kind: 6})
    generated = {r["rollout_id"]: [i for c in calls_of(r) for i in c.generation] for r in rollouts}
    for policy in POLICIES:
        result = convert_token_records([str(run)], str(tmp_path / policy), policy)
        tokens = pl.read_parquet(result.files["tokens"])
        assert result.card.rollouts_selected == 6
        for rollout_id, group in tokens.group_by("rollout_id"):
            masked = [
                t
                for row in group.sort("sample_index").iter_rows(named=True)
                for t, bit in zip(row["input_ids"], row["loss_mask"], strict=True)
                if bit
            ]
            expected = generated[rollout_id[0]]
            if policy == "truncate" and kind is not None:
                expected = calls_of(next(r for r in rollouts if r["rollout_id"] == rollout_id[0]))[0].generation
            assert masked == expected
        rollouts_out = {"drop": 0 if kind else 6}.get(policy, 6)
        assert tokens["rollout_id"].n_unique() == rollouts_out


@pytest.mark.integration
@pytest.mark.parametrize("policy", POLICIES)
def test_the_flow_writes_token_records_with_each_on_break_policy(tmp_path: Path, policy: str) -> None:
    """`--format tokens --on-break POLICY` as the flow's own rl output, with the break the template makes."""
    rows = [
        {
            "responses_create_params": {
                "input": [{"role": "user", "content": f"What is {a} * 3?"}],
                "tools": [CALC_TOOL],
            },
            "agent_ref": {"name": "calc"},
            "expected_answer": str(a * 3),
        }
        for a in (4, 11)
    ]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    with (
        start_sim_server(latency_ms=2, seed=1, reasoning=False, drift_turn_token=True) as sim,
        start_resources_server() as gym,
    ):
        config = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=sim.url,
            model="sim-model",
            remote_env={"calc": gym.url},
            num_repeats=2,
            temperature=0.7,
            seed=3,
            run_name=policy,
            return_tokens=True,
            train={"formats": {"rl": ["parquet", "tokens"]}, "on_break": policy},
        )
        summary = collect_rollouts(config)
    assert summary.status == "completed"
    card = (Path(summary.run_url) / "train" / "rl" / "tokens" / "tokens_card.json").read_text()
    tokens = pl.read_parquet(Path(summary.run_url) / "train" / "rl" / "tokens" / "tokens.parquet")
    assert f'"policy": "{policy}"' in card
    if policy == "drop":
        assert tokens.height == 0  # every rollout breaks at the turn token: all dropped, and counted
    else:
        assert tokens.height >= 4 and tokens.select(pl.col("loss_mask").list.sum().sum()).item() > 0
        assert (tokens.height > 4) == (policy == "split")  # split starts a new sample at each break

"""Multi-step tool tasks through the real collect flow: the bundled kv_store prompts solved by the simulated model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from tests.integration.conftest import run_rows
from tests.unit.test_envs_kv_store import plan_of

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server", "board")]
KV_PROMPTS = str(resources.files("rollouts").joinpath("data/kv_store_prompts.jsonl"))


def collect(tmp_path: Path, url: str, name: str, **fields: Any) -> tuple[list[dict[str, Any]], Path]:
    options = dict(
        input=KV_PROMPTS,
        out=str(tmp_path / "runs"),
        model_url=url,
        model="sim-model",
        env="kv_store",
        num_repeats=2,
        parallel=16,
        shard_size=6,
        temperature=0.0,
        seed=7,
        run_name=name,
    )
    config = CollectConfig(**{**options, **fields})
    summary = collect_rollouts(config)
    assert summary.status == "completed"
    run = Path(summary.run_url)
    return run_rows(run, "rollouts"), run


def tool_turns(row: dict[str, Any]) -> list[list[str]]:
    """The names called in each model turn of a rollout (a turn ends at its function outputs)."""
    turns: list[list[str]] = [[]]
    for item in row["response"]["output"]:
        if item["type"] == "function_call":
            turns[-1].append(item["name"])
        elif item["type"] == "function_call_output" and turns[-1]:
            turns.append([])
    return [turn for turn in turns if turn]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_kv_store_prompts_are_solved_in_several_model_calls_with_parallel_calls(tmp_path: Path, sim, api: str) -> None:
    rollouts, run = collect(tmp_path, sim.url, f"kv-{api}", api=api)
    assert len(rollouts) == 12 * 2 and all(r["status"] == "ok" for r in rollouts)
    assert sum(r["reward"] for r in rollouts) / len(rollouts) > 0.9
    model_calls = {}
    for r in rollouts:
        turns = tool_turns(r)
        assert turns == [[name for name, _ in step] for step in plan_of(r)]  # the prompt's plan, turn for turn
        assert r["end_reason"] == "stop" and r["finish_reason"] == "stop"
        assert r["response"]["output"][-1]["type"] == "message"
        assert sum(stats["calls"] for stats in r["tool_stats"].values()) == sum(map(len, turns))
        assert all(stats["errors"] == 0 for stats in r["tool_stats"].values())
        model_calls[r["rollout_id"]] = len(turns) + 1  # the tool turns and the final answer
    assert min(model_calls.values()) == 2 and max(model_calls.values()) == 4
    assert sum(calls >= 3 for calls in model_calls.values()) >= 2 * 10
    parallel = [r for r in rollouts if any(len(turn) > 1 for turn in tool_turns(r))]
    assert len(parallel) == 2 * 7  # 7 of the 12 prompts have a step of parallel calls
    # the RL file counts the same model turns
    rl = pl.read_parquet(run / "train" / "rl" / "rollouts.parquet").select("rollout_id", "num_turns", "reward")
    assert dict(rl.select("rollout_id", "num_turns").iter_rows()) == model_calls


def test_sampling_leaves_calls_out_so_groups_differ_in_reward(tmp_path: Path, sim) -> None:
    rollouts, _ = collect(tmp_path, sim.url, "kv-sampled", temperature=1.0, num_repeats=4)
    rewards = [r["reward"] for r in rollouts]
    assert 0.1 < sum(rewards) / len(rewards) < 0.9
    by_task: dict[int, set[float]] = {}
    for r in rollouts:
        by_task.setdefault(r["_ng_task_index"], set()).add(r["reward"])
    assert sum(len(values) > 1 for values in by_task.values()) >= 3  # groups with reward variance: an RL signal

"""The end of a run: shards that never ran are counted as not run, never as failed rollouts; the manifest lists
the committed files."""

from __future__ import annotations

import json

from rollouts.config import CollectConfig
from rollouts.run import RunPlan, RunRef, ShardRef, ShardResult
from rollouts.stages.outcome import finish_run, judge
from rollouts.storage import Store


def _plan(tmp_path, shards: int = 4) -> RunPlan:
    config = CollectConfig(input="prompts.jsonl", model_url="http://127.0.0.1:9/v1", model="m", num_repeats=4)
    run = RunRef(run_id="r" * 16, run_url=str(tmp_path / "run"), config=config)
    return RunPlan(
        run=run,
        shards=[ShardRef(shard=f"{i:05d}", prompts=2) for i in range(shards)],
        prompts=2 * shards,
        rejects=0,
        resumed=False,
    )


def test_shards_that_never_ran_are_not_run_not_failed(tmp_path):
    plan = _plan(tmp_path)
    results = [
        ShardResult(shard="00000", rollouts=7, failed=1, reward_sum=3.5),
        ShardResult(shard="00001", rollouts=8, failed=0, reward_sum=8.0),
    ]
    summary = finish_run(plan, judge(plan, results, ["00002", "00003"]), results, ["00002", "00003"], {}, {})
    assert (summary.rollouts_ok, summary.rollouts_failed, summary.rollouts_not_run) == (15, 1, 16)
    assert summary.failure_fraction == 1 / 32 and summary.status == "failed"
    assert summary.reason.startswith("16 of 32 rollouts not run: 2 shard task(s) did not finish (00002, 00003)")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"]["rollouts_not_run"] == 16 and manifest["counts"]["rollouts_failed"] == 1


def test_a_complete_run_lists_its_files_with_sizes_and_checksums(tmp_path):
    plan = _plan(tmp_path, shards=1)
    store = Store(plan.run.run_url)
    store.write_lines(['{"a": 1}'] * 8, "rollouts", "00000.jsonl")
    store.write_lines([], "failures", "00000.jsonl")
    store.write_lines(["x"], "shards", "00000.jsonl")  # working files are not part of the inventory
    results = [ShardResult(shard="00000", rollouts=8, reward_sum=8.0)]
    summary = finish_run(plan, judge(plan, results, []), results, [], {}, {})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert summary.status == "completed" and summary.rollouts_not_run == 0
    assert sorted(manifest["files"]) == ["failures/00000.jsonl", "rollouts/00000.jsonl"]
    assert manifest["files"]["rollouts/00000.jsonl"]["size"] == 8 * len('{"a": 1}\n')

"""verl's own dataset code on our files: MultiTurnSFTDataset's loss mask, RLHFDataset's prompt rows, AgentLoopOutput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rollouts.training import ProcessConfig, process
from tests.trainers.conftest import GYM, trained_text, trainer_module

pytestmark = pytest.mark.trainers
trainer_module("verl")
omegaconf = trainer_module("omegaconf")


def test_sft_tool_rows_train_arguments_encoded_once(tmp_path: Path, tokenizer: Any) -> None:
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    config = ProcessConfig(objective="sft", formats=("verl",), min_reward=None)
    result = process([GYM], config, str(tmp_path / "sft"))
    dataset = MultiTurnSFTDataset(
        result.files["verl"], tokenizer, omegaconf.OmegaConf.create({"max_length": 1024, "truncation": "right"})
    )
    texts = []
    for i in range(len(dataset)):
        item = dataset[i]
        ids = item["input_ids"][item["attention_mask"].bool()].tolist()
        mask = item["loss_mask"][item["attention_mask"].bool()].tolist()
        texts.append(
            (
                tokenizer.decode(ids),
                trained_text(tokenizer, ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]),
            )
        )
    ((whole, trained),) = [t for t in texts if "<tool_call>" in t[0]]
    assert '"arguments": {"expression": "6*7"}' in "".join(trained)  # an object, rendered once by tojson
    assert '\\"' not in whole and "null" not in whole  # no double encoding, no null-padded tool schema
    assert '"required": ["expression"]' in whole
    assert not any("tool_response" in run for run in trained)


def test_rl_prompt_rows_carry_no_rollout_results(tmp_path: Path, tokenizer: Any) -> None:
    from verl.utils.dataset.rl_dataset import RLHFDataset

    base = json.loads(Path(GYM).read_text().splitlines()[0])
    path = tmp_path / "rollouts.jsonl"
    with path.open("w") as f:
        for i, (answer, reward) in enumerate([("4", 1.0), ("5", 0.0)]):
            row = {
                **base,
                "_ng_rollout_index": i,
                "difficulty": "easy",  # the input's own field
                "extracted_answer": answer,  # verifier results: one rollout's, never the prompt's
                "judge": {"verdict": answer == "4"},
                "end_reason": "stop",
                "reward": reward,
            }
            f.write(json.dumps(row) + "\n")
    result = process([str(path)], ProcessConfig(objective="rl", formats=("verl",)), str(tmp_path / "rl"))
    dataset = RLHFDataset(
        result.files["verl"],
        tokenizer,
        omegaconf.OmegaConf.create({"max_prompt_length": 512, "filter_overlong_prompts": False}),
    )
    assert len(dataset) == 1
    row = dataset[0]
    metadata = json.loads(row["extra_info"]["metadata"])
    assert metadata == {"expected_answer": "4", "difficulty": "easy"}
    assert row["reward_model"]["ground_truth"] == "4" and row["data_source"] == "math"


def test_token_records_load_as_agent_loop_output(tmp_path: Path) -> None:
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    result = process([GYM], ProcessConfig(objective="rl", formats=("tokens",)), str(tmp_path / "rl"))
    path = next(p for p in (tmp_path / "rl").rglob("verl.parquet"))
    rows = pl.read_parquet(path).to_dicts()
    assert rows and result.files
    fields = set(AgentLoopOutput.model_fields)
    for row in rows:
        out = AgentLoopOutput(**{k: v for k, v in row.items() if k in fields})
        assert out.reward_score == row["reward"]
        assert len(out.response_mask) == len(out.response_ids)

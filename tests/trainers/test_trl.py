"""TRL's own dataset preparation on our SFT and DPO files: what is under the loss mask (tool results never are)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rollouts.process import ProcessConfig, process
from tests.trainers.conftest import GYM, trained_text, trainer_module

pytestmark = pytest.mark.trainers
datasets = trainer_module("datasets")
trl = trainer_module("trl")

TOOL_OUTPUT = "<tool_response>\n42\n</tool_response>"


def rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def sft_labels(tmp_path: Path, model: Any, tokenizer: Any, path: str, **options: Any) -> list[tuple[str, list[str]]]:
    """(whole text, trained runs) of each example as SFTTrainer prepares the file."""
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, **options)
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows(path)),
        processing_class=tokenizer,
    )
    out = []
    for example in trainer.train_dataset:
        out.append(
            (tokenizer.decode(example["input_ids"]), trained_text(tokenizer, example["input_ids"], example["labels"]))
        )
    return out


def test_sft_prompt_completion_trains_only_what_the_model_wrote(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    config = ProcessConfig(objective="sft", formats=("trl-prompt-completion",), min_reward=None)
    path = process([GYM], config, str(tmp_path / "sft")).files["trl-prompt-completion"]
    examples = sft_labels(tmp_path, model, tokenizer, path)  # TRL's defaults: completion-only loss
    tool_rows = [(text, trained) for text, trained in examples if "<tool_call>" in text]
    assert len(tool_rows) == 2  # the tool rollout: one row per model turn
    for _, trained in examples:
        assert not any("tool_response" in run or run == "42\n" for run in trained)
    # the first turn trains the call (arguments encoded once), the second the answer; the tool result is in its prompt
    first, second = tool_rows
    assert first[1] == [
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call><|im_end|>\n'
    ]
    assert TOOL_OUTPUT in second[0] and second[1] == ["The answer is 42.<|im_end|>\n"]


def test_sft_messages_with_assistant_only_loss(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    config = ProcessConfig(objective="sft", formats=("trl",), min_reward=None)
    path = process([GYM], config, str(tmp_path / "sft")).files["trl"]
    examples = sft_labels(tmp_path, model, tokenizer, path, assistant_only_loss=True)
    ((text, trained),) = [e for e in examples if "<tool_call>" in e[0]]
    assert TOOL_OUTPUT in text
    assert not any("tool_response" in run or "42\n" in run.split("The")[0] for run in trained)
    joined = "".join(trained)
    assert '"arguments": {"expression": "6*7"}' in joined and "The answer is 42." in joined


def test_dpo_tool_pair_trains_the_first_differing_model_turn(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    config = ProcessConfig(objective="dpo", formats=("trl",))
    path = process([GYM], config, str(tmp_path / "dpo")).files["trl"]
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows(path)),
        processing_class=tokenizer,
    )
    pairs = [
        (tokenizer.decode(e["prompt_ids"]), tokenizer.decode(e["chosen_ids"]), tokenizer.decode(e["rejected_ids"]))
        for e in trainer.train_dataset
    ]
    tool = [p for p in pairs if "<tool_call>" in p[1]]
    assert len(tool) == 1
    _, chosen, rejected = tool[0]  # DPO's completion mask is all of chosen_ids and rejected_ids
    assert "tool_response" not in chosen and "tool_response" not in rejected
    assert chosen == '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call><|im_end|>\n'
    assert rejected == "I think 41.<|im_end|>\n"

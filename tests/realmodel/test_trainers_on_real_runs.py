"""TRL's own dataset preparation on the SFT file of a real model's tool run (the `tool_run` of conftest.py): what
SmolLM2 wrote is under the loss, and neither the tool's output nor the earlier call that came with the prompt is.

Needs the `trainers` extra (tests/trainers/conftest.py: skipped without it, failed in CI where it is required)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rollouts.process import ProcessConfig, process
from tests.integration.conftest import run_rows
from tests.trainers.conftest import model, tokenizer, trainer_module  # noqa: F401  (the trainers' fixtures)
from tests.trainers.test_trl import sft_labels

pytestmark = pytest.mark.trainers
trainer_module("trl")

CALLS = {
    "city": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
    "town": '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call><|im_end|>\n',
}


def sft_file(tool_run: Path, out: Path) -> list[dict[str, Any]]:
    config = ProcessConfig(objective="sft", formats=("trl-prompt-completion",), min_reward=None)
    path = process([str(tool_run)], config, str(out)).files["trl-prompt-completion"]
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write(rows: list[dict[str, Any]], path: Path) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("argument", ["city", "town"])
def test_trl_trains_what_the_real_model_wrote(
    argument: str,
    tool_run: Path,
    tmp_path: Path,
    model: Any,  # noqa: F811
    tokenizer: Any,  # noqa: F811
) -> None:
    """One tool set per file: the rollout whose tool takes `argument`. Exactly
    what the model wrote is trained: its call, then its reply to the tool's output (SmolLM2 tends to echo it)."""
    [row] = [r for r in run_rows(tool_run, "rollouts") if argument in json.dumps(r["responses_create_params"]["tools"])]
    output = {item["type"]: item for item in row["response"]["output"]}
    reply = output["message"]["content"][0]["text"]
    sft = [r for r in sft_file(tool_run, tmp_path / "sft") if argument in json.dumps(r["tools"])]
    examples = sft_labels(tmp_path, model, tokenizer, write(sft, tmp_path / f"{argument}.jsonl"))
    assert [runs for _, runs in examples] == [[CALLS[argument]], [reply + "<|im_end|>\n"]]
    # the earlier call came with the prompt and the tool's output is context: neither is trained
    tool_output = f"<tool_response>\n{output['function_call_output']['output']}\n</tool_response>"
    assert "London" in examples[0][0] and tool_output in examples[1][0]


def test_trl_file_with_two_argument_shapes(tool_run: Path, tmp_path: Path, model: Any, tokenizer: Any) -> None:  # noqa: F811
    """Both rollouts in one file, loaded as docs/training-files.md shows (`Json()` columns): each call is trained as
    the model wrote it, not as one struct type for both (`{"city": "Paris", "town": null}`)."""
    path = write(sft_file(tool_run, tmp_path / "sft"), tmp_path / "both.jsonl")
    trained = [run for _, runs in sft_labels(tmp_path, model, tokenizer, path) for run in runs]
    assert sorted(run for run in trained if "<tool_call>" in run) == sorted(CALLS.values())

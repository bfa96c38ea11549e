"""The trainers' own dataset code on the `process` files of a real model's tool run (the `tool_run` of conftest.py):
TRL's SFT preparation, verl's MultiTurnSFTDataset and RLHFDataset, and the OpenAI chat fine-tuning rows (checked
against openai-python's message types, as vLLM's request model copies them, and rendered by DeepSeek-V3's original
template, which takes `arguments` as JSON text). What SmolLM2 wrote is under the loss, the tool's output never is.

Needs the `trainers` extra (tests/trainers/conftest.py: skipped without it, failed in CI where it is required)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from rollouts.training import ProcessConfig, ProcessResult, process
from tests.integration.conftest import run_rows
from tests.servers.vllm_batch import OpenAIChatCompletionMessageParam
from tests.trainers.conftest import model, tokenizer, trained_text, trainer_module  # noqa: F401  (the fixtures)
from tests.trainers.test_trl import sft_labels
from tests.unit.test_chat_templates import render

pytestmark = pytest.mark.trainers
trainer_module("trl")
trainer_module("verl")
omegaconf = trainer_module("omegaconf")
OPENAI_MESSAGES = TypeAdapter(list[OpenAIChatCompletionMessageParam])  # openai-python's message types

CALLS = {
    "city": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
    "town": '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call><|im_end|>\n',
}


def processed(tool_run: Path, out: Path, objective: str, fmt: str) -> ProcessResult:
    min_reward = {"sft": {"min_reward": None}}.get(objective, {})
    return process([str(tool_run)], ProcessConfig(objective=objective, formats=(fmt,), **min_reward), str(out))


def sft_file(tool_run: Path, out: Path, fmt: str = "trl-prompt-completion") -> list[dict[str, Any]]:
    path = processed(tool_run, out, "sft", fmt).files[fmt]
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def model_turns(tool_run: Path, argument: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The rollout whose tool takes `argument`: the model's call, the tool's output, the model's reply."""
    [row] = [r for r in run_rows(tool_run, "rollouts") if argument in json.dumps(r["responses_create_params"]["tools"])]
    output = {item["type"]: item for item in row["response"]["output"]}
    return output["function_call"], output["function_call_output"], output["message"]["content"][0]["text"]


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


def test_verl_sft_trains_the_assistant_turns_of_one_tool_shape(tool_run: Path, tmp_path: Path, tokenizer: Any) -> None:  # noqa: F811
    """verl's MultiTurnSFTDataset trains every assistant message: the call that came with the prompt (an assistant
    turn of the conversation), the model's call and its reply; never the tool's output. One Parquet type cannot hold
    both argument shapes without null padding, so the file keeps one and the card says the other was left out."""
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    result = processed(tool_run, tmp_path / "sft", "sft", "verl")
    [written] = [o for o in result.card.outputs if o.format == "verl"]
    assert written.rows == 1 and written.note is not None and written.note.startswith("1 rows left out"), written
    dataset = MultiTurnSFTDataset(
        result.files["verl"], tokenizer, omegaconf.OmegaConf.create({"max_length": 2048, "truncation": "error"})
    )
    [item] = [dataset[i] for i in range(len(dataset))]
    keep = item["attention_mask"].bool()
    ids, mask = item["input_ids"][keep].tolist(), item["loss_mask"][keep].tolist()
    whole = tokenizer.decode(ids)
    trained = trained_text(tokenizer, ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)])
    argument = "city" if '"city": "Paris"' in whole else "town"
    call, output, reply = model_turns(tool_run, argument)
    earlier = CALLS[argument].replace("Paris", "London")  # the call that came with the prompt
    assert trained == [earlier, CALLS[argument], reply + "<|im_end|>\n"]  # SmolLM2's reply echoes the tool's output
    tool_turn = f"<|im_start|>user\n<tool_response>\n{output['output']}\n</tool_response><|im_end|>"
    assert tool_turn in whole and not any(tool_turn in run for run in trained)
    assert json.loads(call["arguments"]) == {argument: "Paris"}


def test_verl_rl_rows_are_the_prompts_the_model_was_given(tool_run: Path, tmp_path: Path, tokenizer: Any) -> None:  # noqa: F811
    from verl.utils.dataset.rl_dataset import RLHFDataset

    result = processed(tool_run, tmp_path / "rl", "rl", "verl")
    dataset = RLHFDataset(
        result.files["verl"],
        tokenizer,
        omegaconf.OmegaConf.create({"max_prompt_length": 1024, "filter_overlong_prompts": False}),
    )
    rows = [dataset[i] for i in range(len(dataset))]
    assert len(rows) == 2 and {row["data_source"] for row in rows} == {"weather"}  # one per prompt (tool sets differ)
    asked = {json.dumps(r["responses_create_params"]["input"]) for r in run_rows(tool_run, "rollouts")}
    for row in rows:
        prompt = [{k: v for k, v in m.items() if v is not None} for m in row["raw_prompt"]]
        assert json.dumps(prompt) in asked  # the prompt exactly as the model got it, no rollout result in it
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        assert text.endswith("What is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n") and "sunny" not in text
        assert set(row["extra_info"]["tools_kwargs"]) == {"get_weather"}


def test_openai_sft_rows_are_chat_requests_with_json_text_arguments(tool_run: Path, tmp_path: Path) -> None:
    rows = sft_file(tool_run, tmp_path / "sft", "openai")
    assert len(rows) == 2
    for row in rows:
        OPENAI_MESSAGES.validate_python(row["messages"])
        assert [tool["type"] for tool in row["tools"]] == ["function"]
        argument = "city" if "city" in json.dumps(row["tools"]) else "town"
        call, output, reply = model_turns(tool_run, argument)
        *_, asked, called, answered, replied = row["messages"]
        assert asked == {"role": "user", "content": "What is the weather in Paris?"}
        [tool_call] = called["tool_calls"]
        assert tool_call["function"] == {"name": "get_weather", "arguments": call["arguments"]}  # the model's text
        assert answered == {"role": "tool", "tool_call_id": tool_call["id"], "content": output["output"]}
        assert replied == {"role": "assistant", "content": reply}
        text = render("deepseekv3", row["messages"], row["tools"])
        assert f"get_weather\n```json\n{call['arguments']}\n```" in text and output["output"] in text

"""TRL's own dataset preparation on our SFT and DPO files: what is under the loss mask (tool results never are)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rollouts.training import ProcessConfig, process
from tests.trainers.conftest import GYM, ROOT, trained_text, trainer_module

pytestmark = pytest.mark.trainers
datasets = trainer_module("datasets")
trl = trainer_module("trl")

TOOL_OUTPUT = "<tool_response>\n42\n</tool_response>"


def rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def documented_loader() -> Any:
    """`load_trl` of docs/training-files.md, run as written: the way a user loads our TRL files."""
    text = (ROOT / "docs" / "training-files.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def load_trl(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/training-files.md", "exec"), namespace)
    return namespace["load_trl"]


load_trl = documented_loader()


def sft_labels(
    tmp_path: Path, model: Any, tokenizer: Any, path: str, load: Any = None, **options: Any
) -> list[tuple[str, list[str]]]:
    """(whole text, trained runs) of each example as SFTTrainer prepares the file, loaded by `load` (default: as
    docs/training-files.md shows)."""
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, **options)
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=(load or load_trl)(path),
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


# Tool calls as a model may write them in one run: other tools' keys, its own key order, an integer beside a float.
SHAPES = [
    ("get_weather", {"city": "Paris"}),
    ("get_weather", {"town": "Paris"}),
    ("move", {"dy": 3, "dx": 4}),
    ("move", {"dx": 1.5, "dy": 2}),
]


def shapes_run(path: Path) -> Path:
    """One rollout per entry of SHAPES: the call (its tool's schema has exactly those keys), the result, an answer."""
    base = json.loads(Path(GYM).read_text().splitlines()[4])
    with path.open("w") as out:
        for i, (name, arguments) in enumerate(SHAPES):
            properties = {key: {"type": "number" if name == "move" else "string"} for key in arguments}
            tool = {"type": "function", "name": name, "parameters": {"type": "object", "properties": properties}}
            params = {**base["responses_create_params"], "tools": [tool]}
            call = {"type": "function_call", "call_id": f"c{i}", "name": name, "arguments": json.dumps(arguments)}
            result = {"type": "function_call_output", "call_id": f"c{i}", "output": "ok"}
            output = [call, result, answer(f"Done {i}.")]
            row = {**base, "responses_create_params": params, "_ng_task_index": i, "response": {"output": output}}
            out.write(json.dumps(row) + "\n")
    return path


def written_call(name: str, arguments: dict[str, Any]) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call><|im_end|>\n'


def test_tool_arguments_of_many_shapes_train_as_written(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    """One file, four argument shapes: loaded as docs/training-files.md shows, TRL trains each call exactly as the
    model wrote it, and each prompt shows its own tool's schema. Loaded as one Arrow type per column, the same file
    trains null keys (`{"city": "Paris", "town": null, ...}`) and floats the model never wrote (`"dx": 4.0`)."""
    config = ProcessConfig(objective="sft", formats=("trl-prompt-completion", "trl"), min_reward=None)
    result = process([str(shapes_run(tmp_path / "rollouts.jsonl"))], config, str(tmp_path / "sft"))
    files = result.files
    assert all("datasets.Json()" in (output.note or "") for output in result.card.outputs)  # the card says how
    expected = sorted(written_call(name, arguments) for name, arguments in SHAPES)

    examples = sft_labels(tmp_path, model, tokenizer, files["trl-prompt-completion"])
    assert sorted(run for _, runs in examples for run in runs if "<tool_call>" in run) == expected
    for text, _ in examples:
        assert "null" not in text
    assert sum('"properties": {"dy": {"type": "number"}, "dx": {"type": "number"}}' in t for t, _ in examples) == 2

    messages = sft_labels(tmp_path, model, tokenizer, files["trl"], assistant_only_loss=True)
    # in a whole conversation Qwen2.5's template opens a call turn with the (empty) content and a newline
    assert sorted(run.removeprefix("\n") for _, runs in messages for run in runs if "<tool_call>" in run) == expected

    merged = sft_labels(tmp_path, model, tokenizer, files["trl-prompt-completion"], load=merging)
    trained = "".join(run for _, runs in merged for run in runs)
    assert '"arguments": {"city": "Paris", "town": null' in trained and '"dx": 4.0}' in trained


def merging(path: str) -> Any:
    """The file as one Arrow type per column: `Dataset.from_list(rows)`."""
    return datasets.Dataset.from_list(rows(path))


def test_sft_messages_with_assistant_only_loss(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    config = ProcessConfig(objective="sft", formats=("trl",), min_reward=None)
    path = process([GYM], config, str(tmp_path / "sft")).files["trl"]
    examples = sft_labels(tmp_path, model, tokenizer, path, assistant_only_loss=True)
    ((text, trained),) = [e for e in examples if "<tool_call>" in e[0]]
    assert TOOL_OUTPUT in text
    assert not any("tool_response" in run or "42\n" in run.split("The")[0] for run in trained)
    joined = "".join(trained)
    assert '"arguments": {"expression": "6*7"}' in joined and "The answer is 42." in joined


def dpo_sequences(tmp_path: Path, model: Any, tokenizer: Any, path: str) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of each pair as DPOTrainer tokenizes the file; its completion mask is all of chosen
    and rejected."""
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=load_trl(path),
        processing_class=tokenizer,
    )
    return [
        (tokenizer.decode(e["prompt_ids"]), tokenizer.decode(e["chosen_ids"]), tokenizer.decode(e["rejected_ids"]))
        for e in trainer.train_dataset
    ]


def test_dpo_tool_pair_trains_the_first_differing_model_turn(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    config = ProcessConfig(objective="dpo", formats=("trl",))
    path = process([GYM], config, str(tmp_path / "dpo")).files["trl"]
    tool = [p for p in dpo_sequences(tmp_path, model, tokenizer, path) if "<tool_call>" in p[1]]
    assert len(tool) == 1
    _, chosen, rejected = tool[0]
    assert "tool_response" not in chosen and "tool_response" not in rejected
    assert chosen == '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call><|im_end|>\n'
    assert rejected == "I think 41.<|im_end|>\n"


def call(call_id: str, expression: str, result: str) -> list[dict[str, Any]]:
    arguments = json.dumps({"expression": expression})
    return [
        {"type": "function_call", "call_id": call_id, "name": "calculator", "arguments": arguments},
        {"type": "function_call_output", "call_id": call_id, "output": result},
    ]


def answer(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def test_dpo_pair_after_a_shared_tool_exchange(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    """Two rollouts that make the same call, get the same result, then part: the shared call and result are context
    (in TRL's prompt, rendered by the template with the tools), and each side is the model turn after them."""
    base = json.loads(Path(GYM).read_text().splitlines()[4])
    base["responses_create_params"]["input"][-1]["content"] = "What is 6*7+1?"
    chosen = [*call("c1", "6*7", "42"), *call("c2", "42+1", "43"), answer("It is 43.")]
    rejected = [*call("r1", "6*7", "42"), answer("It is 44.")]
    path = tmp_path / "rollouts.jsonl"
    path.write_text(
        "".join(
            json.dumps({**base, "_ng_rollout_index": i, "reward": reward, "response": {"output": output}}) + "\n"
            for i, (output, reward) in enumerate([(chosen, 1.0), (rejected, 0.0)])
        )
    )
    config = ProcessConfig(objective="dpo", formats=("trl", "trl-standard"))
    result = process([str(path)], config, str(tmp_path / "dpo"))
    (row,) = rows(result.files["trl"])
    assert trl.data_utils.is_conversational(row)
    shared_call = row["prompt"][-2]["tool_calls"][0]  # TRL's tool-call shape: arguments as an object
    assert shared_call["type"] == "function"
    assert shared_call["function"] == {"name": "calculator", "arguments": {"expression": "6*7"}}

    ((prompt, chosen_text, rejected_text),) = dpo_sequences(tmp_path, model, tokenizer, result.files["trl"])
    assert '<tools>\n{"type": "function", "function": {"name": "calculator"' in prompt
    assert prompt.endswith(
        '<|im_start|>user\nWhat is 6*7+1?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{"name": "calculator", '
        '"arguments": {"expression": "6*7"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n42\n'
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert chosen_text == (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "42+1"}}\n</tool_call><|im_end|>\n'
    )
    assert rejected_text == "It is 44.<|im_end|>\n"
    # TRL's standard (plain-text) format cannot hold the pair: left out and said so, not reduced to the final texts
    assert result.rows["trl-standard"] == 0
    (note,) = [o.note for o in result.card.outputs if o.format == "trl-standard"]
    assert note is not None and "dpo `trl`" in note

"""NeMo RL's own data path on our files: what its loaders and preprocessors put under the loss mask.

SFT: `openai_format` dataset -> `sft_processor` -> `add_loss_mask_to_message_log` (assistant roles), as its SFT
script does. DPO: `PreferenceDataset` -> `preference_preprocessor` -> `preference_collate_fn` (final message only).
RL: the message log NeMo RL builds from a NeMo Gym rollout (`NemoGym._postprocess_nemo_gym_to_nemo_rl_result`)
against our `tokens/nemo_rl.jsonl`. Needs a NeMo RL checkout (NEMO_RL_SRC, see conftest.nemo_rl_module).
"""

from __future__ import annotations

import copy
import json
import types
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rollouts.training import ProcessConfig, process
from tests.trainers.conftest import GYM, nemo_rl_module, trained_text, trainer_module

pytestmark = [
    pytest.mark.trainers,
    # NeMo RL adds a BOS token when the tokenizer has one; Qwen2.5's has none, and NeMo RL says so on every row
    pytest.mark.filterwarnings("ignore:add_bos_token is True but the tokenizer does not have a BOS token"),
]
torch = trainer_module("torch")
processors = nemo_rl_module("nemo_rl.data.processors")
messages = nemo_rl_module("nemo_rl.data.llm_message_utils")
collate = nemo_rl_module("nemo_rl.data.collate_fn")
datasets = nemo_rl_module("nemo_rl.data.datasets")
response_datasets = nemo_rl_module("nemo_rl.data.datasets.response_datasets")
preference_datasets = nemo_rl_module("nemo_rl.data.datasets.preference_datasets")
nemo_gym = nemo_rl_module("nemo_rl.environments.nemo_gym")


def under_mask(tokenizer: Any, ids: Any, mask: Any, lengths: Any) -> list[tuple[str, list[str]]]:
    """(whole text, trained runs) of each row of a padded batch."""
    out = []
    for i, n in enumerate(lengths.tolist()):
        row, row_mask = ids[i][:n].tolist(), mask[i][:n].tolist()
        labels = [t if m else -100 for t, m in zip(row, row_mask, strict=True)]
        out.append((tokenizer.decode(row), trained_text(tokenizer, row, labels)))
    return out


def flat(tokenizer: Any, message_logs: list[Any]) -> list[tuple[str, list[str]]]:
    """(whole text, trained runs) of each message log, flattened as NeMo RL batches it."""
    cat, lengths = messages.batched_message_log_to_flat_message(
        message_logs, pad_value_dict={"token_ids": tokenizer.pad_token_id}
    )
    return under_mask(tokenizer, cat["token_ids"], cat["token_loss_mask"], lengths)


def test_sft_trains_assistant_turns_only(tmp_path: Path, tokenizer: Any) -> None:
    # the `trl` file: tool-call arguments as objects, which NeMo RL's guide asks for and its templates render once
    config = ProcessConfig(objective="sft", formats=("trl",), min_reward=None)
    path = process([GYM], config, str(tmp_path / "sft")).files["trl"]
    # heterogeneous tool arguments need NeMo RL's PreservingDataset (HF datasets would pad them with nulls)
    data = response_datasets.load_response_dataset(
        {
            "dataset_name": "openai_format",
            "data_path": path,
            "use_preserving_dataset": True,
            "processor": "sft_processor",
        }
    )
    processor = partial(data.processor, add_bos=True, add_eos=True, add_generation_prompt=False)  # its SFT defaults
    dataset = datasets.AllTaskProcessedDataset(
        data.dataset, tokenizer, None, {data.task_name: (data.task_spec, processor)}, max_seq_length=1024
    )
    logs = [dataset[i]["message_log"] for i in range(len(dataset))]
    assert all(dataset[i]["loss_multiplier"] == 1.0 for i in range(len(dataset)))
    messages.add_loss_mask_to_message_log(logs, roles_to_train_on=["assistant"])
    examples = flat(tokenizer, logs)
    ((whole, trained),) = [e for e in examples if "<tool_call>" in e[0]]
    assert "<tool_response>\n42\n</tool_response>" in whole
    # NeMo RL cuts a message at the template's turn boundary, so a turn's role header is part of it
    assert trained == [
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
        "<|im_end|>\n",
        "<|im_start|>assistant\nThe answer is 42.<|im_end|>\n",
    ]
    assert [t for _, t in examples if t is not trained] == [
        ["<|im_start|>assistant\nIt is \\boxed{4}.<|im_end|>\n"],
        ["<|im_start|>assistant\nNo.<|im_end|>\n"],
    ]


def test_dpo_trains_each_side_final_message(tmp_path: Path, tokenizer: Any) -> None:
    result = process([GYM], ProcessConfig(objective="dpo", formats=("nemo-rl",)), str(tmp_path / "dpo"))
    data = preference_datasets.load_preference_dataset(
        {"dataset_name": "PreferenceDataset", "data_path": result.files["nemo-rl"]}
    )
    dataset = datasets.AllTaskProcessedDataset(
        data.dataset,
        tokenizer,
        None,
        {data.task_name: (data.task_spec, processors.preference_preprocessor)},
        max_seq_length=1024,
    )
    batch = collate.preference_collate_fn(
        [dataset[i] for i in range(len(dataset))], tokenizer, make_sequence_length_divisible_by=1, add_loss_mask=True
    )
    trained = [t for _, t in under_mask(tokenizer, batch["input_ids"], batch["token_mask"], batch["input_lengths"])]
    # chosen and rejected interleaved; the tool pair of the fixture is left out (the card says why)
    assert trained == [
        ["<|im_start|>assistant\nIt is \\boxed{4}.<|im_end|>\n"],
        ["<|im_start|>assistant\nIt is \\boxed{5}.<|im_end|>\n"],
    ]
    assert result.rows["nemo-rl"] == 1


def test_dpo_preprocessor_does_not_render_tools(tokenizer: Any) -> None:
    """Why tool-call pairs are not in the nemo-rl file: NeMo RL's preference path drops the row's `tools`, so the
    model would be trained to call tools it was never shown."""
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    datum = {
        "context": [{"role": "user", "content": "What is 6*7?"}],
        "completions": [
            {"rank": 0, "completion": [{"role": "assistant", "content": "42"}]},
            {"rank": 1, "completion": [{"role": "assistant", "content": "41"}]},
        ],
        "tools": tools,
    }
    spec = processors.TaskDataSpec(task_name="pairs")
    out = processors.preference_preprocessor(datum, spec, tokenizer, max_seq_length=1024, idx=0)
    text = tokenizer.decode(torch.cat([m["token_ids"] for m in out["message_log_chosen"]]).tolist())
    assert "42" in text and "calculator" not in text and "<tools>" not in text


def test_rl_token_records_are_nemo_rls_own_message_log(tmp_path: Path, tokenizer: Any) -> None:
    base = json.loads(Path(GYM).read_text().splitlines()[4])  # the calculator rollout: call, result, answer
    params = base["responses_create_params"]
    tools = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in params["tools"]]

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    rendered = tokenizer.apply_chat_template(params["input"], tools=tools, add_generation_prompt=True, tokenize=False)
    prompt = encode(rendered)
    call = encode('<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call><|im_end|>')
    result = encode("\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    answer = encode("The answer is 42.<|im_end|>")
    output = copy.deepcopy(base["response"]["output"])
    output[0].update(prompt_token_ids=prompt, generation_token_ids=call, generation_log_probs=[-0.5] * len(call))
    output[2].update(
        prompt_token_ids=prompt + call + result, generation_token_ids=answer, generation_log_probs=[-0.25] * len(answer)
    )
    row = {**base, "response": {**base["response"], "output": output}}
    path = tmp_path / "rollouts.jsonl"
    path.write_text(json.dumps(row) + "\n")
    files = process([str(path)], ProcessConfig(objective="rl", formats=("tokens",)), str(tmp_path / "rl")).files
    ((ours,),) = [[json.loads(line) for line in Path(files["nemo_rl"]).read_text().splitlines()]]

    # what NeMo RL makes of the same rollout when NeMo Gym hands it over (called unbound, as its own tests do)
    gym = types.SimpleNamespace(cfg={})
    postprocess = nemo_gym.NemoGym.__ray_metadata__.modified_class._postprocess_nemo_gym_to_nemo_rl_result
    theirs = postprocess(gym, copy.deepcopy(row), copy.deepcopy(row), tokenizer)["message_log"]
    assert [(m["role"], m["token_ids"]) for m in ours["message_log"]] == [
        (m["role"], m["token_ids"].tolist()) for m in theirs
    ]
    assert [m.get("generation_logprobs") for m in ours["message_log"]] == [
        m["generation_logprobs"].tolist() if "generation_logprobs" in m else None for m in theirs
    ]

    # its loss mask on our records: exactly the generated tokens, as our flat record says
    log = [
        {**m, **{k: torch.tensor(m[k]) for k in ("token_ids", "generation_logprobs") if k in m}}
        for m in ours["message_log"]
    ]
    messages.add_loss_mask_to_message_log([log], roles_to_train_on=["assistant"])
    ((whole, trained),) = flat(tokenizer, [log])
    assert trained == [tokenizer.decode(call), tokenizer.decode(answer)]
    assert "<tool_response>\n42\n</tool_response>" in whole
    (record,) = pl.read_parquet(files["tokens"]).to_dicts()
    assert record["input_ids"] == prompt + call + result + answer
    assert record["loss_mask"] == [0] * len(prompt) + [1] * len(call) + [0] * len(result) + [1] * len(answer)

"""NeMo Gym data read losslessly: output folders, per-rollout prompts, verifier `status`, images, instructions, ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rollouts.training import ProcessConfig, load_rollouts, process, process_many, select

FIXTURES = Path(__file__).parents[1] / "fixtures"
GYM_OUT = FIXTURES / "gym_out"
SYSTEM = {"role": "system", "content": "You play blackjack. Answer Hit. or Stand."}


class ByTaskConfig(ProcessConfig):
    """ProcessConfig with the `pair_by_task_index` option (a field the CLI config gains)."""

    pair_by_task_index: bool = True


def read_jsonl(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_output_folder_reads_failures_into_their_groups_and_inputs_as_inputs() -> None:
    loaded = load_rollouts([str(GYM_OUT)])
    df = loaded.frame_data
    assert df is not None and loaded.bad_rows.count == 0
    assert (loaded.files, loaded.rows, loaded.input_rows) == (3, 8, 9)
    assert loaded.missing_rollouts == 1  # task 0 rollout 4: owed by the inputs, neither done nor failed
    failed = df.filter(pl.col("status") == "failed")
    assert failed.select("group_id", "rollout_index").rows() == [("rollouts#0", 3), ("rollouts#1", 2)]
    assert json.loads(failed["error"][0]) == {
        "type": "ClientResponseError", "message": "500, message='Internal Server Error'", "status_code": 500,
        "stage": "agent_run_error",
    }  # fmt: skip
    card = select(loaded, ProcessConfig(objective="rl")).card
    assert card.notes[0].startswith("1 of 9 rollouts owed by the materialized inputs have no row")
    same = load_rollouts([str(GYM_OUT / "*.jsonl")]).frame_data  # the glob docs/training-files.md shows reads the same
    assert same is not None and same.drop("file", "row").equals(df.drop("file", "row"))


def test_verifier_status_is_the_verifiers_own() -> None:
    df = load_rollouts([str(GYM_OUT)]).frame_data
    assert df is not None
    task0 = df.filter((pl.col("task_index") == 0) & (pl.col("status") == "ok")).sort("rollout_index")
    # "failed: dealer bust" with reward 1.0 is a successful rollout; the verifier's word stays with its fields
    assert task0["reward"].to_list() == [1.0, 0.0, 1.0]
    assert [json.loads(e)["status"] for e in task0["extra"]] == ["pass", "fail", "failed: dealer bust"]
    assert json.loads(task0["extra"][0]) == {"agent_ref": {"name": "blackjack"}, "hand": "K, 9", "status": "pass"}


def test_every_rollout_keeps_its_own_prompt_with_instructions_first() -> None:
    df = load_rollouts([str(GYM_OUT)]).frame_data
    assert df is not None
    task0 = df.filter(pl.col("task_index") == 0).sort("rollout_index")
    prompts = [json.loads(p) for p in task0.filter(pl.col("status") == "ok")["prompt"]]
    assert [p[1]["content"] for p in prompts] == [f"Your hand: {h}. Hit or stand?" for h in ("K, 9", "7, 5", "A, 3")]
    assert all(p[0] == SYSTEM for p in prompts)
    assert task0.filter(pl.col("status") == "ok")["prompt_key"].n_unique() == 3


def test_rl_rows_carry_their_own_prompt_and_unknown_keys(tmp_path: Path) -> None:
    result = process([str(GYM_OUT)], ProcessConfig(objective="rl", formats=("jsonl",)), str(tmp_path))
    rows = {(r["task_index"], r["rollout_index"]): r for r in read_jsonl(result.files["jsonl"])}
    assert rows[(0, 1)]["prompt"][1]["content"] == "Your hand: 7, 5. Hit or stand?"
    assert rows[(0, 1)]["extra"] == {"agent_ref": {"name": "blackjack"}, "hand": "7, 5", "status": "fail"}
    assert rows[(2, 0)]["prompt"] == [] and rows[(2, 0)]["output"][0]["role"] == "user"  # input: [] kept


def test_dpo_pairs_need_one_prompt_unless_asked_to_pair_by_task(tmp_path: Path) -> None:
    selection = select(load_rollouts([str(GYM_OUT)]), ProcessConfig(objective="dpo"))
    drops = {d.rule: d.count for d in selection.card.pair_drops}
    assert drops["different_prompts"] == 3  # three blackjack rollouts, three hands: no pair among them
    assert selection.selected_data is not None and selection.selected_data["group_id"].to_list() == ["rollouts#1"]
    # asked to pair the task regardless: "Hit." (A, 3; reward 1) over "Stand." (7, 5; reward 0); the two "Stand."
    # answers are identical completions and never a pair
    by_task = select(load_rollouts([str(GYM_OUT)]), ByTaskConfig(objective="dpo", pairing="all-pairs"))
    assert by_task.selected_data is not None and by_task.selected_data["group_id"].to_list() == [
        "rollouts#0",
        "rollouts#1",
    ]
    result = process(
        [str(GYM_OUT)], ByTaskConfig(objective="dpo", pairing="all-pairs", formats=("trl",)), str(tmp_path)
    )
    pair = read_jsonl(result.files["trl"])[0]
    assert pair["prompt"][1]["content"] == "Your hand: A, 3. Hit or stand?"  # the chosen side's own prompt
    assert (pair["chosen"], pair["rejected"]) == (
        [{"role": "assistant", "content": "Hit."}],
        [{"role": "assistant", "content": "Stand."}],
    )


def test_sft_is_best_of_n_per_prompt_and_ends_with_an_assistant_turn(tmp_path: Path) -> None:
    result = process(
        [str(GYM_OUT)], ProcessConfig(objective="sft", formats=("openai", "trl", "verl"), min_reward=1.0), str(tmp_path)
    )
    rows = read_jsonl(result.files["openai"])
    assert [r["messages"][-1] for r in rows] == [
        {"role": "assistant", "content": c} for c in ("Stand.", "Hit.", "Red.", "7.")
    ]
    assert rows[0]["messages"][0] == SYSTEM and rows[0]["parallel_tool_calls"] is False
    assert rows[0]["tools"][0]["function"]["strict"] is True
    assert rows[3]["messages"] == [
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7."},
    ]


def test_images_per_format(tmp_path: Path) -> None:
    results = process_many(
        [str(GYM_OUT)],
        [
            ProcessConfig(objective="sft", formats=("openai", "trl", "verl"), min_reward=1.0),
            ProcessConfig(objective="dpo", formats=("trl", "openai", "trl-standard", "nemo-rl")),
        ],
        str(tmp_path),
    )
    sft, dpo = results
    image_row = read_jsonl(sft.files["openai"])[2]["messages"][0]["content"]
    assert image_row[0] == {"type": "text", "text": "What colour is this pixel?"}
    assert image_row[1]["type"] == "image_url" and image_row[1]["image_url"]["url"].startswith("data:image/png;base64,")
    trl = read_jsonl(sft.files["trl"])[2]["messages"][0]["content"]
    assert trl[1] == {"type": "image", "image": image_row[1]["image_url"]["url"]}
    verl = pl.read_parquet(sft.files["verl"]).to_dicts()[2]
    assert verl["messages"][0]["content"] == "What colour is this pixel?<image>" and verl["images"] == [
        {"image": trl[1]["image"]}
    ]
    notes = {o.format: o.note or "" for o in dpo.card.outputs}
    assert dpo.rows["trl"] == dpo.rows["openai"] == 1 and dpo.rows["trl-standard"] == dpo.rows["nemo-rl"] == 0
    assert "images" in notes["trl-standard"] and "images" in notes["nemo-rl"]


def test_verl_rl_prompts(tmp_path: Path) -> None:
    result = process([str(GYM_OUT)], ProcessConfig(objective="rl", formats=("verl",)), str(tmp_path))
    table = pl.read_parquet(result.files["verl"])
    assert table.columns == ["data_source", "prompt", "reward_model", "extra_info", "images"]
    assert table.schema["prompt"].inner.fields[0].name == "role"  # type: ignore[attr-defined]
    rows = table.to_dicts()
    assert len(rows) == 5  # three blackjack hands, the image prompt, the prime prompt
    first = rows[0]
    assert first["data_source"] == "blackjack" and first["prompt"][0]["content"] == SYSTEM["content"]
    assert first["extra_info"]["index"] == 0 and first["extra_info"]["need_tools_kwargs"] is True
    assert first["extra_info"]["tools_kwargs"] == {"draw_card": {"create_kwargs": {"ground_truth": None}}}
    image = rows[3]
    assert image["reward_model"] == {"style": "rule", "ground_truth": "red"} and image["prompt"][0]["content"].endswith(
        "<image>"
    )


def test_group_ids_hold_no_local_path(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "gym_out"
    shutil.copytree(GYM_OUT, copy)
    here, there = load_rollouts([str(GYM_OUT)]).frame_data, load_rollouts([str(copy)]).frame_data
    assert here is not None and there is not None
    assert here["group_id"].to_list() == there["group_id"].to_list()
    assert here["rollout_id"].to_list() == there["rollout_id"].to_list()
    assert not any(str(FIXTURES) in g for g in here["group_id"])


@pytest.mark.parametrize("status", ["pass", "fail", "scored", "error", "failed: timeout", "failed"])
def test_any_verifier_status_on_a_gym_row_is_read(tmp_path: Path, status: str) -> None:
    row = json.loads((GYM_OUT / "rollouts.jsonl").read_text().splitlines()[3])
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({**row, "status": status}) + "\n")
    df = load_rollouts([str(path)]).frame_data
    assert df is not None and df["status"].to_list() == ["ok"] and json.loads(df["extra"][0])["status"] == status

"""The stage API as the flow uses it: small, serialisable objects between load, select and write."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from rollouts.errors import ConfigError
from rollouts.process.writers import TRL_LOAD
from rollouts.training import ProcessConfig, Selection, load_rollouts, process_many, select, write_outputs

GYM = str(Path(__file__).parents[1] / "fixtures" / "process" / "gym.jsonl")


def test_stages_pass_uris_not_data(tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    loaded = load_rollouts([GYM], workdir=work)
    assert loaded.frame_data is None and loaded.frame_uri is not None and loaded.frame_uri.startswith(work)
    config = ProcessConfig(objective="dpo")
    selection = select(loaded, config, workdir=work)
    assert selection.selected_data is None and selection.selected_uri is not None
    assert len(selection.model_dump_json()) < 20_000
    for restored in (Selection.model_validate_json(selection.model_dump_json()), pickle.loads(pickle.dumps(selection))):
        result = write_outputs(restored, config, str(tmp_path / "out"))
        assert result.rows == {"trl": 2, "openai": 1}
        assert result.out_dir == str(tmp_path / "out" / "dpo")


def test_format_stage_refuses_a_mismatched_config(tmp_path: Path) -> None:
    selection = select(load_rollouts([GYM]), ProcessConfig(objective="rl"))
    with pytest.raises(ConfigError, match="selection is for rl"):
        write_outputs(selection, ProcessConfig(objective="sft"), str(tmp_path))


def test_process_many_loads_once_and_writes_each_objective(tmp_path: Path) -> None:
    results = process_many([GYM], [ProcessConfig(objective="rl"), ProcessConfig(objective="sft")], str(tmp_path))
    assert [r.objective for r in results] == ["rl", "sft"]
    card = json.loads(Path(results[1].card_json).read_text())
    assert card["inputs"] == [GYM] and card["config"]["objective"] == "sft"
    assert card["outputs"] == [
        {"format": "openai", "path": f"{tmp_path}/sft/openai.jsonl", "rows": 2, "note": None},
        {"format": "trl", "path": f"{tmp_path}/sft/trl.jsonl", "rows": 2, "note": TRL_LOAD},  # its rows have tools
    ]
    with pytest.raises(ConfigError, match="objective listed twice"):
        process_many([GYM], [ProcessConfig(objective="rl"), ProcessConfig(objective="rl")], str(tmp_path))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown sft format"):
        ProcessConfig(objective="sft", formats=("nemo-rl",))
    assert ProcessConfig(objective="dpo").output_formats == ("trl", "openai")
    assert ProcessConfig(objective="rl", formats=["jsonl"]).output_formats == ("jsonl",)  # lists are accepted
    with pytest.raises(ValueError):
        ProcessConfig(objective="dpo", min_margin=-1)

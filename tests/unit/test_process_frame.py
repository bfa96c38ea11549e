"""Loading rollouts into the frame: NeMo Gym rows, our runs, Parquet, globs, derived fields, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rollouts.errors import InputError
from rollouts.process import ROLLOUT_SCHEMA, load_rollouts

FIXTURES = Path(__file__).parents[1] / "fixtures" / "process"
GYM = FIXTURES / "gym.jsonl"


def test_gym_rows_load_with_the_explicit_schema_and_derived_fields() -> None:
    loaded = load_rollouts([str(GYM)])
    df = loaded.frame_data
    assert df is not None and df.schema == pl.Schema(ROLLOUT_SCHEMA)
    assert (loaded.rows, loaded.rows_read, loaded.bad_rows.count, loaded.has_token_ids) == (9, 9, 0, True)
    assert df["group_id"].to_list() == [f"gym#{t}" for t in (0, 0, 0, 0, 1, 1, 1, 2, 2)]  # no local path in ids
    assert df["status"].unique().to_list() == ["ok"]  # absent in Gym rows
    assert df["finish_reason"].to_list() == ["stop"] * 8 + ["length"]  # derived from response.status
    assert df["num_turns"].to_list() == [1, 1, 1, 1, 2, 1, 2, 1, 1]
    assert df["output_tokens"].to_list() == [10, 12, 10, 30, 20, 5, 15, 2, 64]
    assert df["rollout_id"].n_unique() == 9  # derived, deterministic
    keys = df["completion_key"].to_list()
    assert keys[0] == keys[2] and len(set(keys)) == 8  # same completion, different ids
    first = df.row(0, named=True)
    assert first["prompt_token_ids"] == [[1, 2, 3]]
    assert first["generation_token_ids"] == [[7, 8]]
    assert first["generation_log_probs"] == [[-0.5, -0.25]]
    assert df["generation_token_ids"][1] is None


def test_nested_json_round_trips_exactly_including_backslashes() -> None:
    df = load_rollouts([str(GYM)]).frame_data
    assert df is not None
    rows = [json.loads(line) for line in GYM.read_text().splitlines()]
    for got, row in zip(df.iter_rows(named=True), rows, strict=True):
        params = row["responses_create_params"]
        want_prompt = (
            [{"role": "user", "content": params["input"]}] if isinstance(params["input"], str) else params["input"]
        )
        assert json.loads(got["prompt"]) == want_prompt
        assert json.loads(got["tools"]) if got["tools"] else params.get("tools") is None
        tokenless = [
            {k: v for k, v in item.items() if "token" not in k and "log_probs" not in k}
            for item in row["response"]["output"]
        ]
        assert json.loads(got["output"]) == tokenless
    assert "\\boxed{4}" in json.loads(df["output"][0])[1]["content"][0]["text"]


def test_run_directory_reads_rollouts_and_failures_as_one_source() -> None:
    loaded = load_rollouts([str(FIXTURES / "run")])
    df = loaded.frame_data
    assert df is not None and loaded.files == 2
    assert df["source"].unique().to_list() == ["run"]
    assert df["status"].to_list() == ["ok", "ok", "ok", "ok", "failed"]
    assert df["group_id"].to_list()[-2:] == ["run#1"] * 2  # a failure joins its group
    assert json.loads(df["error"][-1]) == {
        "type": "ProviderError",
        "message": "HTTP 503",
        "status_code": 503,
        "stage": "generate",
    }
    assert df["rollout_id"].to_list() == ["run1-0-0", "run1-0-1", "run1-0-2", "run1-1-0", "run1-1-1"]


def test_glob_parquet_and_workdir_give_the_same_frame(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in GYM.read_text().splitlines()]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[4:]) + "\n")
    tool_rows = tmp_path / "tools.ndjson"  # one consistent schema: Parquet cannot hold str-or-list columns
    tool_rows.write_text("\n".join(json.dumps(r) for r in rows[4:7]) + "\n")
    pl.read_ndjson(tool_rows, infer_schema_length=None).write_parquet(tmp_path / "gym.parquet")
    from_glob = load_rollouts([str(tmp_path / "*.jsonl")])
    assert from_glob.files == 2 and from_glob.rows == 9
    parquet = load_rollouts([str(tmp_path / "gym.parquet")], workdir=str(tmp_path / "work"))
    assert parquet.frame_data is None and parquet.frame_uri is not None
    cols = [
        "task_index",
        "rollout_index",
        "reward",
        "finish_reason",
        "num_turns",
        "output_tokens",
        "generation_token_ids",
    ]
    assert_frame_equal(
        parquet.scan().select(cols).collect(), load_rollouts([str(tool_rows)]).scan().select(cols).collect()
    )
    frame = parquet.scan().collect()
    assert frame["line"].to_list() == [1, 2, 3]  # row numbers
    assert json.loads(frame["prompt"][0])[1] == {"role": "user", "content": "What is 6*7?"}
    assert json.loads(frame["output"][0])[0]["arguments"] == '{"expression":"6*7"}'


def test_rows_without_task_index_group_by_prompt(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in GYM.read_text().splitlines()]
    for row in rows:
        del row["_ng_task_index"]
    path = tmp_path / "no_index.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    df = load_rollouts([str(path)]).frame_data
    assert df is not None
    groups = df["group_id"].to_list()
    assert all(g.startswith("no_index#p") for g in groups)
    assert [groups.index(g) for g in groups] == [0, 0, 0, 0, 4, 4, 4, 7, 7]


def test_bad_row_fails_with_file_and_line() -> None:
    with pytest.raises(InputError) as info:
        load_rollouts([str(FIXTURES / "bad.jsonl")])
    assert str(info.value).startswith(f"{FIXTURES / 'bad.jsonl'}:3: missing reward")
    assert "--skip-bad-rows" in str(info.value)
    assert info.value.line == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"responses_create_params": {"input": "x"}, "response": {"output": []}, "reward": 1\n', "invalid JSON"),
        ('{"prompt": "an input row"}', "missing responses_create_params.input"),
        (
            '{"responses_create_params": {"input": "x"}, "response": {"output": []}, "reward": "high"}',
            "reward must be a number",
        ),
        ('{"responses_create_params": {"input": "x"}, "reward": 1.0, "schema_version": 1}', "missing response"),
        (
            '{"responses_create_params": {"input": "x"}, "response": {"output": "text"}, "reward": 1.0}',
            "response.output must be a list",
        ),
        (
            '{"responses_create_params": {"input": "x"}, "response": {"output": []}, "reward": 1, "status": "odd", '
            '"schema_version": 1}',
            "unknown status odd",
        ),
        ("[1, 2]", "not an object"),
    ],
)
def test_each_kind_of_bad_row_is_named(tmp_path: Path, line: str, reason: str) -> None:
    good = GYM.read_text().splitlines()[1]
    path = tmp_path / "mixed.jsonl"
    path.write_text(f"{good}\n{good}\n{line.strip()}\n{good}\n")
    with pytest.raises(InputError, match=rf"mixed\.jsonl:3: .*{reason}"):
        load_rollouts([str(path)])


def test_a_line_polars_refuses_after_the_python_checks_is_isolated_with_its_line() -> None:
    """The Python checks and polars may disagree on a line (a NaN reward once passed `json.loads` and failed the
    whole range "lines 1-56: cannot parse"): such a line is found by halving and becomes one bad row."""
    from rollouts.process.frame import Piece
    from rollouts.process.readers import parse_good_lines

    rows = GYM.read_text().splitlines()
    good = [(n, text) for n, text in enumerate(rows, start=1)]
    good[4] = (5, rows[4].replace('"reward":', '"reward":NaN,"was":'))  # as if the checks had let it through
    frame, refused = parse_good_lines(good, Piece("gym.jsonl", 1, b""), "gym")
    assert [(line, reason) for line, reason, _ in refused] == [(5, "cannot parse")]
    assert frame["line"].to_list() == [1, 2, 3, 4, 6, 7, 8, 9]


def test_skip_bad_rows_counts_them_by_reason() -> None:
    loaded = load_rollouts([str(FIXTURES / "bad.jsonl")], skip_bad_rows=True)
    assert (loaded.rows, loaded.rows_read, loaded.bad_rows.count) == (2, 6, 4)
    assert loaded.bad_rows.by_reason == {
        "invalid JSON": 1,
        "missing responses_create_params.input": 1,
        "bad reward": 1,
        "missing reward": 1,
    }
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in loaded.bad_rows.examples] == ["3", "4", "5", "6"]
    assert loaded.frame_data is not None and loaded.frame_data["line"].to_list() == [1, 7]


def test_invalid_utf8_is_a_bad_row(tmp_path: Path) -> None:
    lines = GYM.read_bytes().splitlines()
    path = tmp_path / "latin.jsonl"
    path.write_bytes(lines[0] + b"\n" + b'{"text": "caf\xe9"}\n' + lines[1] + b"\n")
    with pytest.raises(InputError, match=r"latin\.jsonl:2: not valid UTF-8"):
        load_rollouts([str(path)])
    loaded = load_rollouts([str(path)], skip_bad_rows=True)
    assert (loaded.rows, loaded.bad_rows.by_reason) == (2, {"not UTF-8": 1})


def test_compressed_shards_and_in_progress_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "rollouts").mkdir(parents=True)
    (run / "rollouts" / "shard-0.jsonl.gz").write_bytes(gzip.compress(GYM.read_bytes()))
    (run / "rollouts" / "shard-1.jsonl.tmp").write_text("partial")  # a shard still being written
    loaded = load_rollouts([str(run)])
    assert (loaded.files, loaded.rows) == (1, 9)


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_rollouts([str(tmp_path / "nope.jsonl")])
    with pytest.raises(InputError, match="no file matches"):
        load_rollouts([str(tmp_path / "*.jsonl")])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no rollout rows"):
        load_rollouts([str(tmp_path / "empty.jsonl")])
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="neither a run"):
        load_rollouts([str(tmp_path / "plain")])


def test_small_chunks_keep_line_numbers(tmp_path: Path) -> None:
    lines = GYM.read_text().splitlines()
    path = tmp_path / "chunks.jsonl"
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    loaded = load_rollouts([str(path)], chunk_bytes=700)
    assert loaded.frame_data is not None
    assert loaded.frame_data["line"].to_list() == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert loaded.frame_data["row"].to_list() == list(range(9))

"""Small shards read together: a run's shard files are parsed in batches, with the results of reading them one by
one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rollouts.errors import InputError
from rollouts.process import card, load_rollouts, readers, writers
from rollouts.process.extras import discover
from rollouts.training import ProcessConfig, process_many


def ok_row(task: int, answer: str, reward: float, **extra: object) -> str:
    return json.dumps(
        {
            "responses_create_params": {"input": f"What is {task} + 1? \\boxed{{}}"},
            "expected_answer": str(task + 1),
            "_ng_task_index": task,
            "_ng_rollout_index": 0,
            "rollout_id": f"r{task}",
            "schema_version": 2,
            "sampling": {"temperature": 0.7},
            "response": {
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": f"\\boxed{{{answer}}}"}],
                    }
                ],
                "usage": {"output_tokens": 5},
            },
            "status": "ok",
            "reward": reward,
            **extra,
        }
    )


def failed_row(task: int) -> str:
    return json.dumps(
        {
            "responses_create_params": {"input": f"What is {task} + 1?"},
            "_ng_task_index": task,
            "_ng_rollout_index": 0,
            "rollout_id": f"r{task}",
            "schema_version": 2,
            "response": None,
            "reward": None,
            "status": "failed",
            "error": {
                "type": "ProviderError",
                "message": f"HTTP 503 for {task}",
                "status_code": 503,
                "stage": "generate",
            },
        }
    )


def write_run(root: Path, shards: list[list[str]]) -> Path:
    run = root / "run"
    (run / "rollouts").mkdir(parents=True)
    (run / "failures").mkdir()
    for i, lines in enumerate(shards):
        (run / "rollouts" / f"{i:05d}.jsonl").write_text("".join(line + "\n" for line in lines))
        (run / "failures" / f"{i:05d}.jsonl").write_text("")
    (run / "manifest.json").write_text("{}")
    return run


def one_by_one(run: Path) -> int:
    """A chunk size that holds any one shard but no two: every shard is parsed alone."""
    sizes = sorted(p.stat().st_size for p in (run / "rollouts").glob("*.jsonl"))
    assert sizes[0] + sizes[1] > sizes[-1] + 1
    return sizes[-1] + 1


def test_shards_read_together_give_the_frame_of_shards_read_one_by_one(tmp_path: Path) -> None:
    shards = [
        [ok_row(0, "1", 1.0), ok_row(1, "3", 0.0), failed_row(2)],
        [ok_row(3, "4", 1.0, judge={"note": 'a \\ b "q"'}), failed_row(4), ok_row(5, "6", 1.0)],  # a key only here
        [ok_row(6, "7", 1.0, score=True), ok_row(7, "8", 1.0, score=3), ok_row(8, "0", 0.0)],  # mixed types: as JSON
        [ok_row(9, "10", 1.0, score=2), "", ok_row(10, "11", 1.0, score=5), ok_row(11, "12", 1.0)],  # typed here
    ]
    run = write_run(tmp_path, shards)
    together = load_rollouts([str(run)])
    alone = load_rollouts([str(run)], chunk_bytes=one_by_one(run))
    assert together.frame_data is not None and alone.frame_data is not None
    assert_frame_equal(together.frame_data, alone.frame_data)
    df = together.frame_data
    assert df["row"].to_list() == list(range(12))
    assert df["line"].to_list() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 3, 4]  # each in its own file, blank line kept
    assert [f.rsplit("/", 1)[1] for f in df["file"]] == ["00000.jsonl"] * 3 + ["00001.jsonl"] * 3 + [
        "00002.jsonl"
    ] * 3 + ["00003.jsonl"] * 3
    extra = [json.loads(e) if e else {} for e in df["extra"]]
    assert extra[3] == {"expected_answer": "4", "judge": {"note": 'a \\ b "q"'}}
    assert [e.get("score") for e in extra] == [None] * 6 + [True, 3, None, 2, 5, None]
    assert all("sampling" not in e for e in extra)  # our bookkeeping on our rows
    errors = {line: json.loads(e)["message"] for line, e in zip(df["line"], df["error"], strict=True) if e}
    assert errors == {3: "HTTP 503 for 2", 2: "HTTP 503 for 4"}  # the same line number in two shards
    assert df["status"].to_list().count("failed") == 2


def test_a_bad_row_in_a_later_shard_is_named_by_its_own_file_and_line(tmp_path: Path) -> None:
    odd = json.loads(ok_row(5, "6", 1.0)) | {"status": "odd"}
    run = write_run(
        tmp_path,
        [
            [ok_row(0, "1", 1.0), ok_row(1, "2", 1.0)],
            [ok_row(2, "3", 1.0), json.dumps(odd)],
            [ok_row(3, "4", 1.0), "{not json", ok_row(4, "5", 1.0)],
        ],
    )
    with pytest.raises(InputError, match=r"00001\.jsonl:2: unknown status odd") as info:
        load_rollouts([str(run)])
    assert info.value.line == 2  # type: ignore[attr-defined]
    loaded = load_rollouts([str(run)], skip_bad_rows=True)
    assert (loaded.rows, loaded.rows_read, loaded.bad_rows.count) == (5, 7, 2)
    assert [e.rsplit("/", 1)[1].split(": ")[0] for e in loaded.bad_rows.examples] == ["00001.jsonl:2", "00002.jsonl:2"]
    assert loaded.bad_rows.by_reason == {"unknown status": 1, "invalid JSON": 1}
    assert loaded.frame_data is not None
    assert loaded.frame_data["rollout_id"].to_list() == ["r0", "r1", "r2", "r3", "r4"]
    alone = load_rollouts([str(run)], skip_bad_rows=True, chunk_bytes=one_by_one(run))
    assert alone.frame_data is not None and alone.bad_rows == loaded.bad_rows
    assert_frame_equal(alone.frame_data, loaded.frame_data)


def test_batches_parsed_at_once_are_taken_in_input_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are parsed PARSERS at a time; the first one finishing last changes nothing: rows are numbered, bad rows
    listed and the first bad row raised in input order, each bad line named in its own file."""
    odd = json.loads(ok_row(3, "4", 1.0)) | {"status": "odd"}
    run = write_run(
        tmp_path,
        [
            [ok_row(0, "1", 1.0), "{not json", ok_row(1, "2", 1.0)],
            [ok_row(2, "3", 1.0), json.dumps(odd)],
            [ok_row(4, "5", 1.0), failed_row(5)],
        ],
    )
    monkeypatch.setattr(readers, "BATCH_BYTES", 1)  # every shard its own batch
    parse = readers.parse_or_locate
    second_done = threading.Event()

    def first_finishes_last(pieces: list[readers.Piece], *args: object) -> pl.DataFrame:
        shard = pieces[0].file.rsplit("/", 1)[1]
        if shard == "00000.jsonl":
            assert second_done.wait(10), "the second batch was not parsed while the first one was"
        try:
            return parse(pieces, *args)  # type: ignore[arg-type]
        finally:
            if shard == "00001.jsonl":
                second_done.set()

    monkeypatch.setattr(readers, "parse_or_locate", first_finishes_last)
    loaded = load_rollouts([str(run)], skip_bad_rows=True, workdir=str(tmp_path / "work"))
    assert (loaded.rows, loaded.rows_read, loaded.bad_rows.count) == (5, 7, 2)
    assert [e.rsplit("/", 1)[1].split(": ")[:2] for e in loaded.bad_rows.examples] == [
        ["00000.jsonl:2", "invalid JSON"],
        ["00001.jsonl:2", "unknown status odd"],
    ]
    rows = loaded.scan().select("row", "rollout_id", "line").collect()
    assert rows.rows() == [(0, "r0", 1), (1, "r1", 3), (2, "r2", 1), (3, "r4", 1), (4, "r5", 2)]
    second_done.clear()
    with pytest.raises(InputError, match=r"00000\.jsonl:2: invalid JSON"):
        load_rollouts([str(run)])


def test_rows_without_ids_get_ids_from_their_own_file(tmp_path: Path) -> None:
    row = json.loads(ok_row(0, "1", 1.0))
    del row["rollout_id"], row["_ng_task_index"]
    run = write_run(tmp_path, [[json.dumps(row)], [json.dumps(row)]])
    together = load_rollouts([str(run)])
    alone = load_rollouts([str(run)], chunk_bytes=one_by_one(run))
    assert together.frame_data is not None and alone.frame_data is not None
    ids = together.frame_data["rollout_id"].to_list()
    assert len(set(ids)) == 2 and ids == alone.frame_data["rollout_id"].to_list()  # file name and line decide them


def test_extra_keys_are_found_in_first_seen_order_with_their_types() -> None:
    rows = [
        {"schema_version": 2, "a": 1, "status": "ok", "b": None},
        {"c": "x", "a": 2, "status": "pass"},  # not ours: its status is the verifier's
        {"schema_version": 2, "a": "s", "d": True, "_ng_x": 1, "reward": 1.0},
        {"schema_version": 2, "a": 1, "status": "ok", "b": None},  # a shape seen before
        "[1, 2]",
    ]
    found = discover(pl.Series([r if isinstance(r, str) else json.dumps(r) for r in rows]))
    assert list(found.items()) == [("a", None), ("c", pl.String()), ("status", pl.String()), ("d", pl.Boolean())]


def spread_run(root: Path, shards: int) -> Path:
    """A run of `shards` shard files, each the Gym fixture's groups under new task indices, with the last row of each
    shard's first group written in the next shard (a group whose rows sit in different frame parts)."""
    fixture = Path(__file__).parents[1] / "fixtures" / "process"
    rows = [json.loads(line) for line in (fixture / "gym.jsonl").read_text().splitlines()]
    run = root / "run"
    (run / "rollouts").mkdir(parents=True)
    (run / "failures").mkdir()
    (run / "failures" / "shard-00000.jsonl").write_bytes(
        (fixture / "run" / "failures" / "shard-00000.jsonl").read_bytes()
    )
    carried: list[dict[str, object]] = []
    for shard in range(shards):
        copies = [{**row, "_ng_task_index": row["_ng_task_index"] + 10 * shard} for row in rows]
        late = copies.pop(3)  # task 10*shard, rollout 3: goes to the next shard
        lines = carried + copies
        carried = [late]
        if shard == shards - 1:
            lines += carried
        (run / "rollouts" / f"shard-{shard:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


EVERY_FORMAT = {
    "rl": ["parquet", "jsonl"],
    "sft": ["openai", "trl", "trl-prompt-completion"],
    "dpo": ["trl", "openai", "trl-standard", "nemo-rl"],
}


def processed_files(run: Path, out: Path) -> dict[str, bytes]:
    configs = [ProcessConfig(objective=o, formats=f) for o, f in EVERY_FORMAT.items()]
    configs.append(ProcessConfig(objective="dpo", pairing="all-pairs", formats=["trl"]))
    files: dict[str, bytes] = {}
    for n, config in enumerate(configs):
        process_many([str(run)], [config], str(out / str(n)))
    for path in sorted(out.rglob("*")):
        if path.is_file():
            data = path.read_bytes().replace(str(out).encode(), b"OUT")
            if path.suffix == ".parquet":  # the same rows; row groups may be cut elsewhere
                data = pl.read_parquet(path).write_ndjson().encode()
            files[str(path.relative_to(out))] = data
    return files


def test_a_process_in_many_small_batches_writes_the_files_of_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading one shard per frame part, selecting ~10 rows of whole groups at a time and writing two selected rows (or
    pairs) at a time gives the same files and data cards, byte for byte, as all at once: a group spread over parts is
    still one group, rows and pairs keep their order."""
    run = spread_run(tmp_path, shards=6)
    whole = processed_files(run, tmp_path / "whole")
    monkeypatch.setattr(readers, "BATCH_BYTES", 1)  # every shard its own batch and frame part
    monkeypatch.setattr(writers, "BATCH_ROWS", 2)
    monkeypatch.setattr(card, "BUCKET_ROWS", 10)  # the groups selected a few at a time: 6 buckets of whole groups
    monkeypatch.setattr(readers, "JOIN_ROWS", 5)  # the RL selection joined to the frame a frame part at a time
    parts = processed_files(run, tmp_path / "parts")
    loaded = load_rollouts([str(run)], workdir=str(tmp_path / "work"))
    assert loaded.frame_uri is not None and len(list(Path(loaded.frame_uri).glob("*.parquet"))) == 7
    assert sorted(parts) == sorted(whole) and len(whole) == 4 * 2 + 2 + 3 + 4 + 1
    for name, data in whole.items():
        assert parts[name] == data, name
    sft = [json.loads(line) for line in whole["1/sft/openai.jsonl"].splitlines()]
    pairs = [json.loads(line) for line in whole["3/dpo/trl.jsonl"].splitlines()]
    assert len(sft) == 6 * 2 and len(pairs) >= 6 * 2


def test_a_selection_joined_by_ranges_of_frame_parts_is_the_one_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The selected rows joined to the frame a few parts at a time give the rows of one join, in frame order, with
    ranges that hold no selected row, a selection ending before the frame does, and a selection out of order."""
    run = spread_run(tmp_path, shards=4)
    monkeypatch.setattr(readers, "BATCH_BYTES", 1)
    loaded = load_rollouts([str(run)], workdir=str(tmp_path / "work"))
    assert loaded.frame_uri is not None and len(list(Path(loaded.frame_uri).glob("*.parquet"))) == 5
    columns = ["row", "rollout_id", "output"]
    every = loaded.scan(["row"]).collect()["row"]
    for rows in [every, every.filter(every % 3 == 0), every.filter(every < 7), every.filter(every > 30), every.head(0)]:
        selected = pl.DataFrame({"row": rows, "mark": rows * 10})
        one = loaded.scan(columns).join(selected.lazy(), on="row", how="inner", maintain_order="left").collect()
        for join_rows in (1, 9, 10**6):
            monkeypatch.setattr(readers, "JOIN_ROWS", join_rows)
            assert_frame_equal(loaded.joined(selected, columns).collect(), one)
            assert_frame_equal(loaded.joined(selected.reverse(), columns).collect(), one)

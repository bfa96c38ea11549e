"""convert_token_records and `rollouts tokens`: files written and read back, in our, NeMo RL's and verl's shapes."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from commands.tokens import add_tokens_parser
from rollouts.errors import ConfigError, InputError
from rollouts.records import dumps
from rollouts.sim import SimConfig, serve_in_thread
from rollouts.sim.bpe import TOKENIZER_PATH
from rollouts.tokens.check import calls_of
from rollouts.training import convert_token_records
from tests.servers.episodes import episodes, server_generated

GYM = str(Path(__file__).parents[1] / "fixtures" / "process" / "gym.jsonl")


@pytest.fixture(scope="module")
def rollouts_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Two tasks x two rollouts with the turn-token drift (3 breaks each), two without, a failed and a text-only row."""
    rows = []
    for task_offset, options in ((0, {"drift_turn_token": True}), (2, {})):
        url, stop = serve_in_thread(SimConfig(latency_ms=0, reasoning=False, **options))
        try:
            batch = episodes(url, "chat", tasks=2, repeats=2, turns=2)
        finally:
            stop()
        for row in batch:
            row["_ng_task_index"] += task_offset
            row["rollout_id"] = f"r{row['_ng_task_index']}-{row['_ng_rollout_index']}"
        rows += batch
    failed = {
        **rows[0],
        "_ng_rollout_index": 5,
        "rollout_id": "failed",
        "status": "failed",
        "reward": None,
        "error": {"type": "ProviderError", "message": "boom"},
    }
    text = {
        **rows[-1],
        "_ng_rollout_index": 6,
        "rollout_id": "text",
        "response": {
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]}]
        },
    }
    path = tmp_path_factory.mktemp("in") / "rollouts.jsonl"
    path.write_text("".join(dumps(r) + "\n" for r in [*rows, failed, text]))
    return path, rows


def read(out: Path) -> tuple[pl.DataFrame, list[dict[str, Any]], pl.DataFrame, dict[str, Any]]:
    tokens = pl.read_parquet(out / "tokens.parquet")
    nemo = [json.loads(line) for line in (out / "nemo_rl.jsonl").read_text().splitlines()]
    verl = pl.read_parquet(out / "verl.parquet")
    card = json.loads((out / "tokens_card.json").read_text())
    return tokens, nemo, verl, card


@pytest.mark.parametrize("policy", ["splice", "split", "truncate", "drop"])
def test_records_hold_the_servers_ids_and_logprobs_under_the_mask(
    rollouts_file: tuple[Path, list[dict[str, Any]]], tmp_path: Path, policy: str
) -> None:
    path, rows = rollouts_file
    result = convert_token_records([str(path)], str(tmp_path), policy)
    tokens, nemo, verl, card = read(tmp_path)
    assert tokens.schema["input_ids"] == pl.List(pl.Int32) and tokens.schema["loss_mask"] == pl.List(pl.Int8)
    assert tokens.schema["logprobs"] == pl.List(pl.Float64)
    samples = {"splice": 8, "split": 4 * 4 + 4, "truncate": 8, "drop": 4}[policy]
    assert result.rows == {"tokens": samples, "nemo_rl": samples, "verl": samples} and tokens.height == samples
    by_rollout = {r["rollout_id"]: r for r in rows}
    for rollout_id, group in tokens.group_by("rollout_id", maintain_order=True):
        calls = calls_of(by_rollout[rollout_id[0]])
        broken = by_rollout[rollout_id[0]]["_ng_task_index"] < 2
        kept = calls[:1] if broken and policy == "truncate" else calls
        ids, values = [], []
        for record in group.sort("sample_index").iter_rows(named=True):
            for token, bit, value in zip(record["input_ids"], record["loss_mask"], record["logprobs"], strict=True):
                assert (value is None) == (bit == 0)
                if bit:
                    ids.append(token)
                    values.append(value)
        raw_ids, raw_values = server_generated(by_rollout[rollout_id[0]])  # the server's reply bodies
        kept_tokens = sum(len(c.generation) for c in kept)
        assert (ids, values) == (raw_ids[:kept_tokens], raw_values[:kept_tokens])  # float64 read back: exact
    assert card["check"]["broken"] == 4 and card["check"]["breaks_by_kind"] == {"retemplating": 12}
    assert card["rollouts_selected"] == 9 and card["without_token_ids"] == 1
    assert card["generated_tokens_in"] == card["generated_tokens_out"] + card["generated_tokens_dropped"]
    for record, message_row, verl_row in zip(
        tokens.iter_rows(named=True), nemo, verl.iter_rows(named=True), strict=True
    ):
        log = message_row["message_log"]
        assert [m["role"] for m in log] == ["user", "assistant"] * (len(log) // 2)
        assert [t for m in log for t in m["token_ids"]] == record["input_ids"] and message_row["length"] == len(
            record["input_ids"]
        )
        assert all(("generation_logprobs" in m) == (m["role"] == "assistant") for m in log)
        assert [v for m in log if m["role"] == "assistant" for v in m["generation_logprobs"]] == [
            v for v in record["logprobs"] if v is not None
        ]
        prompt = verl_row["prompt_ids"]
        assert prompt + verl_row["response_ids"] == record["input_ids"]
        assert verl_row["response_mask"] == record["loss_mask"][len(prompt) :]
        assert verl_row["response_logprobs"] == [0.0 if v is None else v for v in record["logprobs"][len(prompt) :]]
        assert (message_row["rollout_id"], verl_row["sample_index"]) == (record["rollout_id"], record["sample_index"])


def test_reward_advantage_and_group_come_from_the_rl_selection(
    rollouts_file: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    path, _ = rollouts_file
    convert_token_records([str(path)], str(tmp_path), "split")
    tokens = pl.read_parquet(tmp_path / "tokens.parquet")
    first = tokens.unique("rollout_id", keep="first", maintain_order=True)
    assert first["group_id"].to_list()[:2] == ["rollouts#0", "rollouts#0"]  # no local path in the id
    # each group has rewards 0 and 1: mean 0.5, sample std 0.7071
    assert first["reward"].to_list()[:2] == [0.0, 1.0]
    assert first["advantage"].round(4).to_list()[:2] == [-0.7071, 0.7071]
    assert tokens.filter(pl.col("rollout_id") == "failed").height == 0


def test_nemo_gym_rows_convert_and_count_rows_without_token_ids(tmp_path: Path) -> None:
    result = convert_token_records([GYM], str(tmp_path), "splice")
    tokens = pl.read_parquet(tmp_path / "tokens.parquet")
    assert tokens.height == 1
    row = tokens.row(0, named=True)
    assert (row["input_ids"], row["loss_mask"], row["logprobs"]) == (
        [1, 2, 3, 7, 8],
        [0, 0, 0, 1, 1],
        [None, None, None, -0.5, -0.25],
    )
    assert result.card.without_token_ids == result.card.rollouts_selected - 1
    assert "token records" in Path(result.card_markdown).read_text()


def test_parquet_rollout_inputs_give_the_same_records(
    rollouts_file: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    rows = copy.deepcopy(rollouts_file[1])
    for row in rows:  # one content type per column, as a Parquet writer needs
        for item in row["response"]["output"]:
            if item.get("role") == "user":
                item["content"] = [{"type": "input_text", "text": item["content"]}]
    jsonl, parquet = tmp_path / "rollouts.jsonl", tmp_path / "rollouts.parquet"
    jsonl.write_text("".join(dumps(r) + "\n" for r in rows))
    pl.read_ndjson(jsonl, infer_schema_length=None).write_parquet(parquet)
    convert_token_records([str(jsonl)], str(tmp_path / "a"), "splice")
    convert_token_records([str(parquet)], str(tmp_path / "b"), "splice")
    a, b = (pl.read_parquet(tmp_path / d / "tokens.parquet").drop("group_id") for d in ("a", "b"))
    assert a.equals(b)


def test_bad_policy_and_bad_input_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown policy"):
        convert_token_records([GYM], str(tmp_path), "repair")
    with pytest.raises(InputError, match="no such file"):
        convert_token_records([str(tmp_path / "missing.jsonl")], str(tmp_path), "split")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rollouts")
    add_tokens_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["tokens", *argv])


def test_the_command(
    rollouts_file: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = rollouts_file
    args = parse(
        [str(path), "--out", str(tmp_path / "out"), "--on-break", "splice", "--tokenizer", str(TOKENIZER_PATH)]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "9 rollouts: 4 contiguous, 4 broken (breaks: retemplating 12); 1 without token ids" in printed
    assert "--on-break splice: spliced 12, splice_history_grew 12" in printed
    assert (tmp_path / "out" / "tokens.parquet").exists() and (tmp_path / "out" / "tokens_card.md").exists()
    bad = parse([str(path), "--out", str(tmp_path / "x"), "--tokenizer", str(tmp_path)])
    assert bad.func(bad) == 2 and "no tokenizer.json" in capsys.readouterr().err
    missing = parse([str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x")])
    assert missing.func(missing) == 1
    with pytest.raises(SystemExit):
        parse([str(path), "--out", str(tmp_path), "--on-break", "repair"])


def test_blank_lines_crlf_and_malformed_token_fields(
    rollouts_file: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, rows = rollouts_file
    bad = copy.deepcopy(rows[3])
    bad["rollout_id"] = "bad"
    bad["response"]["output"][-1]["generation_log_probs"].pop()  # well typed (the loader checks types), misaligned
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b"\n".join([dumps(rows[0]).encode(), b"", dumps(rows[2]).encode() + b"\r", dumps(bad).encode()]) + b"\n"
    )
    result = convert_token_records([str(path)], str(tmp_path / "out"), "split")
    assert result.card.malformed == 1 and result.card.check.malformed == 1
    tokens = pl.read_parquet(tmp_path / "out" / "tokens.parquet")
    assert tokens["rollout_id"].unique(maintain_order=True).to_list() == [rows[0]["rollout_id"], rows[2]["rollout_id"]]
    markdown = Path(result.card_markdown).read_text()
    assert "| retemplating | 6 | 2 |" in markdown and "| split | 6 |" in markdown


def test_outputs_on_a_remote_filesystem(tmp_path: Path) -> None:
    import fsspec

    result = convert_token_records([GYM], "memory://tokens-out", "split")
    fs = fsspec.filesystem("memory")
    with fs.open("/tokens-out/tokens.parquet", "rb") as f:
        assert pl.read_parquet(f)["input_ids"].to_list() == [[1, 2, 3, 7, 8]]
    with fs.open("/tokens-out/nemo_rl.jsonl", "r") as f:
        assert json.loads(f.readline())["message_log"][1] == {
            "role": "assistant",
            "content": "",
            "token_ids": [7, 8],
            "generation_logprobs": [-0.5, -0.25],
        }
    assert result.files["verl"] == "memory://tokens-out/verl.parquet" and fs.exists("/tokens-out/tokens_card.json")

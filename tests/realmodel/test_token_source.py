"""Token ids from a real llama.cpp server: `rollouts collect --return-tokens` through the real flow, every call's ids
checked against the server's own tokenizer, and `rollouts tokens` on that run.

The server is llama.cpp's `llama-server` with SmolLM2-135M-Instruct (built once per machine by
`python -m tests.servers.llama build`); without it these tests fail, naming that command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import math_rows, run_rows, write_jsonl
from tests.realmodel.conftest import MODEL

END_OF_TURN = "<|im_end|>"  # SmolLM2's: generated (and kept in the ids) when a call stops by itself


@pytest.fixture(scope="module")
def llama(llama_server: str) -> str:
    """Root URL of the session's llama-server (its tokenizer endpoints are not under /v1)."""
    return llama_server.removesuffix("/v1")


@pytest.fixture(scope="module")
def run_dir(llama: str, prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3 prompts x 2 repeats collected with --return-tokens (auto: the server's replies pick llamacpp)."""
    base = tmp_path_factory.mktemp("collect")
    src = write_jsonl(base / "prompts.jsonl", math_rows(3))
    result = rollouts(
        "collect", str(src), "--model-url", f"{llama}/v1", "--model", MODEL, "--return-tokens",
        "--num-repeats", "2", "--max-output-tokens", "24", "--out", str(base / "runs"), "--run-name", "llama",
        "--no-progress", api_url=prefect_server,
    )  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    return base / "runs" / "llama"


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = run_rows(run, "rollouts")
    assert len(rows) == 6 and {row["status"] for row in rows} == {"ok"}
    return rows


def _post(url: str, body: dict[str, Any]) -> Any:
    response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_calls_ids_are_the_servers_own(llama: str, run_dir: Path) -> None:
    for row in _rows(run_dir):
        assert row["token_source"] == "llamacpp"
        [item] = row["response"]["output"]  # single turn: one message carries the call's token fields
        text = item["content"][0]["text"]
        generated = item["generation_token_ids"]
        assert len(generated) == len(item["generation_log_probs"]) > 0
        decoded = _post(f"{llama}/detokenize", {"tokens": generated})["content"]
        stopped = row["finish_reason"] == "stop"
        assert decoded == (text + END_OF_TURN if stopped else text), (decoded, text, row["finish_reason"])
        messages = [{"role": m["role"], "content": m["content"]} for m in row["responses_create_params"]["input"]]
        prompt = _post(f"{llama}/apply-template", {"messages": messages})["prompt"]
        tokenized = _post(f"{llama}/tokenize", {"content": prompt, "add_special": False, "parse_special": True})
        assert item["prompt_token_ids"] == tokenized["tokens"]
        assert len(item["prompt_token_ids"]) == row["response"]["usage"]["input_tokens"]


def test_token_records_hold_exactly_those_ids_under_the_loss_mask(run_dir: Path, tmp_path: Path) -> None:
    result = rollouts("tokens", str(run_dir), "--out", str(tmp_path / "tokens"))
    assert result.code == 0, result.err
    records = pl.read_parquet(tmp_path / "tokens" / "tokens.parquet")
    by_rollout = {row["rollout_id"]: row["response"]["output"][-1] for row in _rows(run_dir)}
    assert sorted(records["rollout_id"].to_list()) == sorted(by_rollout)  # one sample per single-turn rollout
    for record in records.iter_rows(named=True):
        item = by_rollout[record["rollout_id"]]
        ids, mask = record["input_ids"], record["loss_mask"]
        assert ids == item["prompt_token_ids"] + item["generation_token_ids"]
        assert [i for i, m in zip(ids, mask, strict=True) if m == 1] == item["generation_token_ids"]
        assert mask == [0] * len(item["prompt_token_ids"]) + [1] * len(item["generation_token_ids"])

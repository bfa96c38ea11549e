"""`rollouts demo --model-url ... --model ...`: the demo's whole pipeline (bundled math prompts, RL/SFT/DPO files)
against the real server instead of the simulated one, as docs/collect.md's recipe runs it (here on 2 prompts and
short replies, to stay quick)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import rollouts
from tests.integration.conftest import run_rows
from tests.realmodel.conftest import MODEL, SLOTS


def test_the_demo_runs_against_the_real_model(tmp_path: Path, llama_server: str, prefect_server: str) -> None:
    result = rollouts(
        "demo", "--model-url", llama_server, "--model", MODEL, "--limit", "2", "--num-repeats", "2",
        "--max-output-tokens", "8", "--parallel", str(SLOTS), "--out", str(tmp_path / "runs"), "--no-progress",
        api_url=prefect_server,
    )  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    assert f"collecting from {llama_server} ({MODEL})" in result.err
    assert "simulated" not in result.err
    run = tmp_path / "runs" / "demo"
    rows = run_rows(run, "rollouts")
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
    assert {row["response"]["model"] for row in rows} == {MODEL}
    assert all(row["response"]["usage"]["output_tokens"] <= 8 for row in rows)
    for path in ("train/rl/rollouts.parquet", "train/sft/openai.jsonl", "train/dpo/trl.jsonl"):
        assert (run / path).is_file(), path


def test_the_demo_needs_both_server_options(tmp_path: Path, llama_server: str) -> None:
    result = rollouts("demo", "--model-url", llama_server, "--out", str(tmp_path))
    assert result.code == 2 and result.fast
    assert result.error_lines == [
        "error: --model-url and --model go together: the server, and the model name it serves"
    ]

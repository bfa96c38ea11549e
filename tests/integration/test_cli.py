"""The `rollouts` command as a user runs it: help, the demo, exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port, math_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
COLLECT_OPTIONS = [
    "--out",
    "--model-url",
    "--model",
    "--api",
    "--api-key-env",
    "--objective",
    "--num-repeats",
    "--parallel",
    "--temperature",
    "--top-p",
    "--max-output-tokens",
    "--seed",
    "--limit",
    "--start",
    "--end",
    "--shard-size",
    "--max-concurrent-shards",
    "--env",
    "--remote-env",
    "--run-name",
    "--request-timeout",
    "--max-retries",
    "--max-failure-fraction",
    "--return-tokens",
]


def rollouts(*args: str, api_url: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [sys.executable, "-m", "commands", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_collect_help_documents_every_option():
    out = rollouts("collect", "--help")
    assert out.returncode == 0
    for option in COLLECT_OPTIONS:
        assert option in out.stdout, option


def test_demo_collects_and_prints_where_everything_is(tmp_path, prefect_server):
    out = rollouts("demo", "--out", str(tmp_path / "runs"), "--no-progress", api_url=prefect_server)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    assert f"rollouts:  {run}/rollouts/" in out.stdout
    for objective in ("rl", "sft", "dpo"):
        assert f"\n{objective}:" in out.stdout
    rows = [json.loads(line) for f in (run / "rollouts").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(rows) == 64 * 4
    assert 0.2 < sum(r["reward"] for r in rows) / len(rows) < 1.0  # temperature 0.8: real variance for filtering
    flow_run, task_tags, artifacts = what_the_run_left(prefect_server, str(tmp_path / "runs"))
    assert "rollouts-cli" in flow_run and any(tag.startswith("pid:") for tag in flow_run)  # what reaping reads
    assert task_tags and not any(task_tags), task_tags  # no concurrency-slot round trips per stage task
    # The progress artifact, created and moved beside the run (tasks/artifacts.py), is at 100 when the run ends.
    (shards,) = [a for a in artifacts if (a.get("description") or "").startswith("Shards verified for ")]
    assert shards["type"] == "progress" and shards["data"] == 100.0


def what_the_run_left(api_url: str, out: str) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """The tags of the flow run that wrote into `out`, those of each of its task runs, and its artifacts."""
    import httpx

    runs = httpx.post(
        f"{api_url}/flow_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}, timeout=30
    ).json()
    (run,) = [r for r in runs if ((r["parameters"].get("config") or {}).get("storage") or {}).get("out") == out]
    body = {"flow_runs": {"id": {"any_": [run["id"]]}}, "limit": 200}
    tasks = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=30).json()
    body = {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}
    artifacts = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30).json()
    return run["tags"], [t["tags"] for t in tasks], artifacts


def test_collect_exit_codes_and_messages(tmp_path, sim, prefect_server):
    missing = rollouts(
        "collect",
        str(tmp_path / "nope.jsonl"),
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        str(tmp_path),
        api_url=prefect_server,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    down = rollouts(
        "collect",
        str(write_jsonl(tmp_path / "q.jsonl", math_rows(1))),
        "--model-url",
        f"http://127.0.0.1:{free_port()}/v1",
        "--model",
        "sim-model",
        "--out",
        str(tmp_path),
        api_url=prefect_server,
    )
    assert down.returncode == 2 and "cannot reach the model server" in down.stderr
    bad_url = rollouts("collect", "x.jsonl", "--model-url", "localhost:8000", "--model", "sim-model")
    assert bad_url.returncode == 2 and "--model-url" in bad_url.stderr and "http://" in bad_url.stderr
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(3))
    ok = rollouts(
        "collect",
        str(src),
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        str(tmp_path / "runs"),
        "--num-repeats",
        "2",
        "--temperature",
        "0",
        "--run-name",
        "cli",
        "--no-progress",
        "--objective",
        "rl,sft",
        "--format",
        "sft:trl-prompt-completion",
        "--advantage-scale",
        "none",
        api_url=prefect_server,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "run completed" in ok.stdout and "6 / 6" in ok.stdout
    train = tmp_path / "runs" / "cli" / "train"
    sft = [json.loads(line) for line in (train / "sft" / "trl-prompt-completion.jsonl").read_text().splitlines()]
    assert len(sft) == 3 and all(set(r) >= {"prompt", "completion"} for r in sft)
    assert not (train / "sft" / "openai.jsonl").exists()  # --format replaced the defaults
    assert (train / "rl" / "rollouts.parquet").exists() and (train / "rl" / "data_card.md").exists()
    with pytest.raises(AssertionError):
        assert "Traceback" in ok.stderr


def test_tune_and_tokens_help_and_one_line_usage_errors(tmp_path):
    for command, flag in (
        ("tune", "--max-parallel MAX_PARALLEL"),
        ("tokens", "--on-break {splice,split,truncate,drop}"),
    ):
        shown = rollouts(command, "--help")
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: rollouts {command} ") and flag in shown.stdout
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(1))
    bad = rollouts("tune", str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--max-parallel", "0")
    assert (bad.returncode, bad.stderr) == (2, "error: --max-parallel: Input should be greater than or equal to 1\n")
    bad = rollouts("tokens", str(src), "--out", str(tmp_path / "t"), "--turn-end-id", "-1")
    assert (bad.returncode, bad.stderr) == (2, "error: --turn-end-id: Input should be greater than or equal to 0\n")
    bad = rollouts("tokens", str(src), "--out", str(tmp_path / "t"), "--storage-options", "[1]")
    assert bad.returncode == 2 and "--storage-options: expected a JSON object" in bad.stderr
    missing = rollouts("tune", str(src), "--model", "m")
    assert missing.returncode == 2 and "the following arguments are required: --model-url" in missing.stderr
    unknown = rollouts("tune", str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--parallel", "8")
    assert unknown.returncode == 2 and "unrecognized arguments: --parallel 8" in unknown.stderr

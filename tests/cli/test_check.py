"""`rollouts check` through the real command: verdicts and a summary written beside the rollouts, a table of what
fired, and exit 1 over --max-unhealthy-fraction."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import rollouts
from tests.unit.quality_rows import message, row


def write_rollouts(path: Path) -> Path:
    rows = [row([message("The answer is \\boxed{4}.")], task=t, rollout=r) for t in range(3) for r in range(2)]
    rows[0] = row([message("")], task=0, rollout=0)  # empty final turn
    rows[1] = row([message("ok")], task=0, rollout=1, output_tokens=0)  # usage says no output
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_check_writes_verdicts_and_a_summary_and_names_what_fired(tmp_path: Path) -> None:
    src = write_rollouts(tmp_path / "rollouts.jsonl")
    result = rollouts("check", str(src), "--out", str(tmp_path / "health"), "--skip-checks", "identical_group")
    assert result.code == 0, result.err
    verdicts = [
        json.loads(line) for line in (tmp_path / "health" / "quality" / "verdicts.jsonl").read_text().splitlines()
    ]
    by_id = {v["rollout_id"]: v for v in verdicts}
    assert len(verdicts) == 6
    assert by_id["r0-0"]["verdict"] == "unhealthy" and "empty_completion" in by_id["r0-0"]["checks"]
    assert by_id["r0-1"]["verdict"] == "unhealthy" and "zero_completion_tokens" in by_id["r0-1"]["checks"]
    assert {v["verdict"] for k, v in by_id.items() if not k.startswith("r0-")} == {"healthy"}
    summary = json.loads((tmp_path / "health" / "quality" / "summary.json").read_text())
    assert summary["checks"]["empty_completion"]["fired"] == 1 and "identical_group" not in summary["checks"]
    assert "unhealthy: 2 of 6 (33.3%)" in result.out


def test_check_fails_a_run_over_the_unhealthy_fraction(tmp_path: Path) -> None:
    src = write_rollouts(tmp_path / "rollouts.jsonl")
    result = rollouts(
        "check", str(src), "--out", str(tmp_path / "health"), "--skip-checks", "identical_group",
        "--max-unhealthy-fraction", "0.2",
    )  # fmt: skip
    assert result.code == 1
    assert result.error_lines[-1].startswith("error: 33.3% unhealthy, over --max-unhealthy-fraction 0.2 (top: ")
    assert "--max-unhealthy-fraction" in rollouts("collect", "--help").out


def test_process_drops_unhealthy_rollouts_and_counts_them_in_the_card(tmp_path: Path) -> None:
    src = write_rollouts(tmp_path / "rollouts.jsonl")
    out = tmp_path / "out"
    kept = rollouts("process", str(src), "--objective", "sft", "--out", str(out / "all"))
    dropped = rollouts(
        "process", str(src), "--objective", "sft", "--out", str(out / "healthy"), "--drop-unhealthy", "empty_completion"
    )
    assert kept.code == dropped.code == 0, dropped.err
    card = json.loads((out / "healthy" / "sft" / "data_card.json").read_text())
    assert card["dropped"][0] == {
        "rule": "unhealthy",
        "count": 1,
        "why": "the rollout health checks found it unhealthy (empty_completion; see quality/verdicts.jsonl)",
    }
    healthy = (out / "healthy" / "sft" / "openai.jsonl").read_text().splitlines()
    assert healthy and all('"role":"assistant","content":""' not in line for line in healthy)

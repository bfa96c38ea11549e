"""`rollouts check` through the real command: verdicts and a summary written beside the rollouts, a table of what
fired, and exit 1 over --max-unhealthy-fraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rollouts.records import rollout_id
from tests.cli.conftest import ROOT, rollouts
from tests.unit.quality_rows import message, row

FIXTURES = ROOT / "tests" / "fixtures"


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
        "why": "the rollout health checks found it unhealthy (empty_completion; checked here; `rollouts check` writes "
        "the verdicts)",
    }
    healthy = (out / "healthy" / "sft" / "openai.jsonl").read_text().splitlines()
    assert healthy and all('"role":"assistant","content":""' not in line for line in healthy)


def test_process_drops_unhealthy_rollouts_from_every_objective(tmp_path: Path) -> None:
    rows = [
        row([message(f"The answer is {4 + r}.")], task=t, rollout=r, reward=1.0 if r == 0 else 0.0)
        for t in range(3)
        for r in range(3)
    ]  # a right answer and two wrong ones per prompt: pairs for DPO
    rows[1]["response"]["output"] = [message("")]  # task 0: a wrong answer that says nothing
    rows[5]["response"]["usage"]["output_tokens"] = 0  # task 1: usage says no output
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = rollouts(
        "process", str(src), "--objective", "rl,sft,dpo", "--out", str(out),
        "--drop-unhealthy", "empty_completion,zero_completion_tokens",
    )  # fmt: skip
    assert result.code == 0, result.err
    for objective in ("rl", "sft", "dpo"):
        card = json.loads((out / objective / "data_card.json").read_text())
        assert card["dropped"][0] == {
            "rule": "unhealthy",
            "count": 2,
            "why": "the rollout health checks found it unhealthy (empty_completion, zero_completion_tokens; checked "
            "here; `rollouts check` writes the verdicts)",
        }, objective
        assert "| unhealthy | 2 |" in (out / objective / "data_card.md").read_text()


def test_unknown_check_ids_are_usage_errors_before_any_work(tmp_path: Path) -> None:
    src = write_rollouts(tmp_path / "rollouts.jsonl")
    known = "(known: empty_completion, zero_completion_tokens, "
    for args, says in [
        (("check", str(src), "--skip-checks", "identical_groups"), "--skip-checks: unknown check 'identical_groups' "),
        (("check", str(src), "--checks", "empty_completion,loop"), "--checks: unknown check 'loop' "),
        (
            ("process", str(src), "--objective", "sft", "--out", str(tmp_path / "o"), "--drop-unhealthy", "empty"),
            "--drop-unhealthy: unknown check 'empty' ",
        ),
        (
            ("collect", str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--drop-unhealthy", "x"),
            "--drop-unhealthy: unknown check 'x' ",
        ),
        (
            ("collect", str(src), "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--skip-checks", "x"),
            "--skip-checks: unknown check 'x' ",
        ),
    ]:
        result = rollouts(*args)
        assert result.code == 2 and result.fast, (args, result.err)
        assert len(result.error_lines) == 1 and result.error_lines[0].startswith(f"error: {says}{known}")
    both = rollouts(
        "process", str(src), "--objective", "sft", "--out", str(tmp_path / "o"),
        "--drop-unhealthy", "all,empty_completion",
    )  # fmt: skip
    assert both.code == 2
    assert both.error_lines == ["error: --drop-unhealthy: 'all' (every check) or check ids, not both"]
    assert not (tmp_path / "o").exists() and not (tmp_path / "quality").exists()


def test_check_reads_a_nemo_gym_output_folder(tmp_path: Path) -> None:
    """NeMo Gym's own output (`<stem>.jsonl` beside `_failures` and `_materialized_inputs`): rows without our
    rollout ids get the ids `rollouts process` derives, and its failures and inputs files are not read."""
    gym = tmp_path / "gym_out"
    shutil.copytree(FIXTURES / "gym_out", gym)
    rows = [json.loads(line) for line in (gym / "rollouts.jsonl").read_text().splitlines()]
    rows[0]["response"]["output"][0]["content"][0]["text"] = ""  # blackjack task 0, repeat 0: nothing said
    rows[3]["response"]["output"][0]["content"][0]["text"] = "<think>the ball is red</think>Red."  # vision 1/0
    (gym / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = rollouts("check", f"{gym}/", "--skip-checks", "identical_group", "--max-unhealthy-fraction", "0.5")
    assert result.code == 0, result.err
    assert "unhealthy: 2 of 6 (33.3%)" in result.out
    verdicts = [json.loads(line) for line in (gym / "quality" / "verdicts.jsonl").read_text().splitlines()]
    unhealthy = {(v["_ng_task_index"], v["_ng_rollout_index"]): v for v in verdicts if v["verdict"] == "unhealthy"}
    assert set(unhealthy) == {(0, 0), (1, 0)}
    assert unhealthy[0, 0]["rollout_id"] == rollout_id("rollouts", 0, 0)
    assert unhealthy[0, 0]["evidence"] == {"empty_completion": "the final turn has no text and no tool call"}
    assert unhealthy[1, 0]["evidence"] == {"reasoning_leak": 'the answer contains "<think>"'}
    summary = json.loads((gym / "quality" / "summary.json").read_text())
    assert summary["inputs"] == [str(gym / "rollouts.jsonl")] and summary["failed_not_checked"] == 0
    assert summary["environments"]["vision"]["checks"]["reasoning_leak"]["fired"] == 1
    over = rollouts("check", str(gym), "--out", str(tmp_path / "strict"), "--max-unhealthy-fraction", "0.2")
    assert over.code == 1 and "over --max-unhealthy-fraction 0.2 (top: " in over.error_lines[-1]

"""Reading runs (ours and NeMo Gym's), the verdict and summary files, the report section, and the registry."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from rollouts.quality import (
    QualityConfig,
    UnknownCheckError,
    check_path,
    check_run,
    check_table,
    flagged,
    load_frame,
    markdown_section,
    read_summary,
    read_verdicts,
    register,
    require_known_checks,
    unregister,
    write_quality,
)
from rollouts.quality.registry import result
from rollouts.quality.report import cell, row_url
from rollouts.records import rollout_id

from .quality_rows import CALCULATOR, call, fired, message, output, reasoning, row

FIXTURES = Path(__file__).parents[1] / "fixtures"
LOOP = "We check the sum again. " * 60


def _write_run(root: Path, rows: list[dict[str, object]], *, shards: int = 1) -> Path:
    (root / "rollouts").mkdir(parents=True)
    (root / "failures").mkdir()
    for shard in range(shards):
        part = rows[shard::shards]
        (root / "rollouts" / f"{shard:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    failed = row([], task=99) | {
        "status": "failed",
        "error": {"type": "X", "message": "m", "status_code": None, "stage": "generate"},
    }
    (root / "failures" / "00000.jsonl").write_text(json.dumps(failed) + "\n")
    return root


def _mixed_rows() -> list[dict[str, object]]:
    return [
        row([reasoning("hmm")], task=0, rollout=0, env="math"),
        row([message("It is 4 | or 5.</think>")], task=0, rollout=1, env="math"),
        row([message("It is 4.")], task=1, rollout=0, env="math"),
        row([message(LOOP)], task=1, rollout=1, env="math", finish="length"),
        row(
            [call("calculate", "{bad"), output("c1", "Error: x"), message("4")],
            task=2,
            rollout=0,
            env="calculator",
            tools=[CALCULATOR],
        ),
        row(
            [call("calculate", '{"expression": "2+2"}'), output("c1", "4"), message("4")],
            task=2,
            rollout=1,
            env="calculator",
            tools=[CALCULATOR],
        ),
    ]


def test_run_folder_verdicts_and_summary_files(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "my-run", _mixed_rows())
    outcome = check_path(str(run))
    written = write_quality(outcome, str(run))
    assert written == {"verdicts.jsonl": f"{run}/quality/verdicts.jsonl", "summary.json": f"{run}/quality/summary.json"}
    lines = [json.loads(line) for line in (run / "quality" / "verdicts.jsonl").read_text().splitlines()]
    assert [list(line) for line in lines] == [
        ["rollout_id", "_ng_task_index", "_ng_rollout_index", "verdict", "checks", "evidence"]
    ] * 6
    assert [(v["rollout_id"], v["verdict"], v["checks"]) for v in lines] == [
        ("r0-0", "unhealthy", ["empty_completion", "task_always_unhealthy"]),
        ("r0-1", "unhealthy", ["reasoning_leak", "task_always_unhealthy"]),
        ("r1-0", "healthy", []),
        ("r1-1", "unhealthy", ["runaway_generation"]),
        ("r2-0", "unhealthy", ["malformed_tool_call"]),
        ("r2-1", "healthy", []),
    ]
    loop = '" We check the sum again." ×59 covers 98% of the last 1439 chars'
    assert lines[3]["evidence"] == {"runaway_generation": f"at the token limit, answer: {loop}"}
    assert lines[4]["evidence"] == {"malformed_tool_call": 'calculate: arguments are not JSON: "{bad"'}

    summary = json.loads((run / "quality" / "summary.json").read_text())
    assert summary == read_summary(str(run))
    assert (summary["rollouts_read"], summary["checked"], summary["failed_not_checked"]) == (6, 6, 0)
    assert summary["verdicts"] == {"healthy": 2, "unhealthy": 4, "unobserved": 0}
    assert summary["unhealthy_fraction"] == round(4 / 6, 6)
    assert summary["checks"]["empty_completion"] | {"description": ""} == {
        "fired": 1,
        "fraction": round(1 / 6, 6),
        "evaluated": 6,
        "unobserved": 0,
        "description": "",
    }
    assert summary["inactive_checks"] == ["token_count_mismatch"]
    math, calculator = summary["environments"]["math"], summary["environments"]["calculator"]
    assert (math["rollouts"], math["unhealthy"], math["unhealthy_fraction"]) == (4, 3, 0.75)
    assert math["checks"]["task_always_unhealthy"] == {"fired": 2, "fraction": 0.5}
    assert (calculator["unhealthy"], calculator["checks"]["malformed_tool_call"]["fired"]) == (1, 1)
    assert summary["tasks"] == {
        "tasks": 3,
        "judged": 3,
        "always_unhealthy": 1,
        "always_unhealthy_tasks": [
            {
                "source": "my-run",
                "_ng_task_index": 0,
                "rollouts": 2,
                "checks": {"empty_completion": 1, "reasoning_leak": 1},
            }
        ],
    }
    assert [w["rollout_id"] for w in summary["worst"]] == ["r0-0", "r0-1", "r1-1", "r2-0"]
    assert summary["worst"][0]["file"].endswith("rollouts/00000.jsonl") and summary["worst"][0]["line"] == 1
    assert summary["examples"]["reasoning_leak"][0]["evidence"] == {
        "reasoning_leak": 'the answer contains "</think>"',
        "task_always_unhealthy": summary["examples"]["reasoning_leak"][0]["evidence"]["task_always_unhealthy"],
    }
    assert summary["config"] == QualityConfig().model_dump(mode="json")

    stored = read_verdicts(str(run))
    assert stored["rollout_id"].to_list() == [v["rollout_id"] for v in lines]
    assert flagged(stored)["rollout_id"].to_list() == ["r0-0", "r0-1", "r1-1", "r2-0"]
    assert flagged(stored, ["reasoning_leak", "malformed_tool_call"])["rollout_id"].to_list() == ["r0-1", "r2-0"]
    assert flagged(stored, [])["rollout_id"].to_list() == []
    assert outcome.unhealthy(["reasoning_leak", "malformed_tool_call"])["rollout_id"].to_list() == ["r0-1", "r2-0"]


def test_failed_rows_are_counted_not_checked_and_failures_folder_is_not_read(tmp_path: Path) -> None:
    rows = _mixed_rows() + [row([], task=5) | {"status": "failed", "error": {"type": "T", "message": "m"}}]
    outcome = check_path(str(_write_run(tmp_path / "run", rows)))
    assert (outcome.lines, outcome.checked, outcome.failed) == (7, 6, 1)


def test_chunked_reading_gives_the_same_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [row([message(f"It is {i % 3}.")], task=i // 4, rollout=i % 4) for i in range(40)] + _mixed_rows()
    run = _write_run(tmp_path / "run", rows, shards=5)
    whole = check_path(str(run)).verdicts()
    small = check_path(str(run), chunk_bytes=2_000).verdicts()
    assert small.equals(whole)
    assert whole["verdict"].value_counts().sort("verdict").rows() == [("healthy", 42), ("unhealthy", 4)]
    monkeypatch.setattr("rollouts.quality.report.WRITE_ROWS", 7)  # verdict lines written in several batches
    write_quality(check_path(str(run)), str(run))
    written = [json.loads(line) for line in (run / "quality" / "verdicts.jsonl").read_text().splitlines()]
    assert [v["rollout_id"] for v in written] == whole["rollout_id"].to_list()
    assert [v["verdict"] for v in written] == whole["verdict"].to_list()


def test_nemo_gym_output_folder(tmp_path: Path) -> None:
    outcome = check_path(str(FIXTURES / "gym_out"))
    assert outcome.inputs == (str(FIXTURES / "gym_out" / "rollouts.jsonl"),)  # not the failures or inputs files
    verdicts = outcome.verdicts()
    expected = [rollout_id("rollouts", t, r) for t, r in verdicts.select("_ng_task_index", "_ng_rollout_index").rows()]
    assert verdicts["rollout_id"].to_list() == expected
    assert verdicts["env"].to_list() == ["blackjack"] * 3 + ["vision"] * 2 + ["primes"]
    assert fired(outcome, "runaway_generation") == [False] * 6  # response.status says why each one stopped
    assert outcome.summary()["inactive_checks"] == ["token_count_mismatch"]
    assert verdicts["verdict"].to_list() == ["healthy"] * 5 + ["unobserved"]  # task 2: one rollout, no group to judge


def test_nemo_gym_rows_with_token_ids() -> None:
    outcome = check_path(str(FIXTURES / "process" / "gym.jsonl"))
    assert outcome.checked == 9
    assert fired(outcome, "token_count_mismatch") == [True] + [None] * 8
    assert outcome.table["evidence_token_count_mismatch"][0] == "2 generation token ids, usage.output_tokens = 10"
    frame = load_frame(str(FIXTURES / "process" / "gym.jsonl"))
    assert frame["tools"][0] is None
    assert json.loads(frame.filter(pl.col("task_index") == 1)["tools"][0])[0]["name"] == "calculator"
    assert frame["final_text"][0] == "It is \\boxed{4}."


def test_odd_rows_are_coerced_or_counted_as_bad(tmp_path: Path) -> None:
    chat_style = row([{"type": "message", "role": "assistant", "content": "plain string content"}], task=1)
    nested_output = row(
        [
            call("calculate", '{"expression": "1"}'),
            {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "1"}]},
            message("1"),
        ],
        task=2,
        tools=[CALCULATOR],
    )
    path = tmp_path / "odd.jsonl.gz"
    body = "\n".join([json.dumps(chat_style), "{not json", "", json.dumps(nested_output), "[1, 2]"]) + "\n"
    path.write_bytes(gzip.compress(body.encode()))
    outcome = check_path(str(path))
    assert (outcome.lines, outcome.checked, outcome.bad_rows) == (4, 2, 2)
    line, reason = outcome.bad_examples[0][1:]  # orjson's wording varies by release ("..., expected a string key")
    assert line == 2 and reason.startswith("not JSON (unexpected character") and "line 1 column 2" in reason
    assert outcome.bad_examples[1][1:] == (5, "not a JSON object")
    assert fired(outcome, "empty_completion") == [False, False]
    assert outcome.table["source"].to_list() == ["odd", "odd"]


def test_tool_schemas_keep_their_escapes(tmp_path: Path) -> None:
    path = tmp_path / "tools.jsonl"
    rows = [
        row(
            [call("calculate", '{"expression": "1", "mode": "exact"}'), output("c1", "1"), message("1")],
            tools=[CALCULATOR],
            task=t,
        )
        for t in range(3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = load_frame(str(path))
    assert json.loads(frame["tools"][0])[0]["parameters"]["properties"]["expression"]["pattern"] == "^[\\d +*/()-]+$"
    assert fired(check_run(frame), "malformed_tool_call") == [False, False, False]


def test_markdown_section_escapes_pipes(tmp_path: Path) -> None:
    outcome = check_path(str(_write_run(tmp_path / "run", _mixed_rows())))
    text = markdown_section(outcome.summary())
    assert text.startswith(
        "## Rollout health\n\n6 rollouts checked: **4 unhealthy (66.67%)**, 0 unobserved, 2 healthy."
    )
    assert cell("a|b\nc") == "a\\|b c"
    table_rows = [line for line in text.splitlines() if line.startswith("| `r0-1`")]
    assert len(table_rows) == 1 and "4 \\| or 5" not in table_rows[0]  # the evidence quotes the marker only
    tables: list[list[str]] = []
    for at, line in enumerate(text.splitlines()):
        if line.startswith("|"):
            if not text.splitlines()[at - 1].startswith("|"):
                tables.append([])
            tables[-1].append(line)
    assert len(tables) == 3
    assert (
        "\nTasks whose every rollout is unhealthy: 1 of 3 judged: 0 (empty_completion ×1, reasoning_leak ×1).\n" in text
    )
    for table in tables:  # every row has as many cells as its header: no pipe leaked out of a cell
        assert {line.replace("\\|", "").count("|") for line in table} == {table[0].count("|")}
    assert '| `reasoning_leak` | 1 | 16.67% | 0 | the answer contains "</think>" |' in text
    assert "| math | 4 | 3 | 75.00% | task_always_unhealthy (2), empty_completion (1), runaway_generation (1) |" in text
    shard = (tmp_path / "run" / "rollouts" / "00000.jsonl").as_uri()
    assert f"| [`rollouts/00000.jsonl:2`]({shard}#L2) |" in table_rows[0]  # the worst rollouts link to their rows
    assert row_url("s3://b/my run/r (1).jsonl", 7) == "s3://b/my%20run/r%20%281%29.jsonl#L7"
    checks = check_table(outcome.summary())
    assert checks[0] == {
        "check": "empty_completion",
        "fired": 1,
        "share": "16.67%",
        "unobserved": 0,
        "example": "the final turn has only reasoning (3 chars)",
        "what fires it": checks[0]["what fires it"],
    }


def test_the_documented_way_to_add_a_check_works() -> None:
    """docs/quality.md, "Adding a check": its example, run as written, registers a check that fires on a refusal and
    not on an answer, is named by the command-line validation and shows up in the summary."""
    doc = (Path(__file__).parents[2] / "docs" / "quality.md").read_text()
    section = doc.split("## Adding a check", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/quality.md", "exec"), {})
    try:
        require_known_checks(QualityConfig(checks=("refusal",)), ["refusal"])
        rows = [row([message("I can't help with that.")]), row([message("It is 4.")], task=1)]
        outcome = check_run(rows, QualityConfig())
        assert fired(outcome, "refusal") == [True, False]
        assert outcome.table["evidence_refusal"][0] == 'refused: "I can\'t help with that."'
        assert (
            outcome.summary()["checks"]["refusal"]["description"]
            == 'The answer is a refusal ("I can\'t help with that").'
        )
    finally:
        unregister("refusal")
    with pytest.raises(UnknownCheckError, match="--drop-unhealthy: unknown check 'refusal'"):
        require_known_checks(drop_unhealthy=["refusal"])


def test_a_registered_check_runs_and_is_reported() -> None:
    @register("says_four", needs=("final_text",))
    def says_four(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
        """The answer says four."""
        return result(frame, pl.col("final_text").str.contains("four"), pl.lit("four"))

    try:
        outcome = check_run(
            [row([message("four")]), row([message("4")], task=1)],
            QualityConfig(checks=("says_four", "empty_completion")),
        )
        assert outcome.checks == ("empty_completion", "says_four")
        assert fired(outcome, "says_four") == [True, False]
        assert outcome.summary()["checks"]["says_four"]["description"] == "The answer says four."
        assert outcome.summary()["tasks"] == {
            "tasks": 2,
            "judged": 0,
            "always_unhealthy": 0,
            "always_unhealthy_tasks": [],
        }
        assert outcome.unhealthy(["says_four"])["rollout_id"].to_list() == ["r0-0"]
        assert outcome.top_checks() == [("says_four", 1)]
        with pytest.raises(ValueError, match="registered twice"):
            register("says_four", needs=())(says_four)
    finally:
        unregister("says_four")


def test_check_run_refuses_a_frame_without_the_columns() -> None:
    with pytest.raises(ValueError, match="not a check frame"):
        check_run(pl.DataFrame({"rollout_id": ["x"]}))
    empty = check_run([])
    assert (empty.checked, empty.unhealthy_fraction) == (0, 0.0)
    assert markdown_section(empty.summary()).startswith("## Rollout health\n\n0 rollouts checked")


def test_rows_polars_refuses_are_isolated_in_small_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rollouts.quality.loader as loader

    seen: list[int] = []
    decode_python = loader.decode_python

    def spy(lines: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, int, str]]]:
        seen.append(lines.height)
        return decode_python(lines)

    monkeypatch.setattr(loader, "PYTHON_BLOCK", 4)
    monkeypatch.setattr(loader, "decode_python", spy)
    rows = [row([message(f"It is {i}.")], task=i) for i in range(64)]
    rows[40]["response"]["output"][0]["content"] = "a bare string"
    rows[40]["response"]["usage"] = "10 tokens"  # a type neither decoder takes: polars refuses, then coerced
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outcome = check_path(str(path))
    assert outcome.checked == 64 and seen == [4]
    assert outcome.table.filter(pl.col("task_index") == 40)["completion_preview"].to_list() == ["a bare string"]

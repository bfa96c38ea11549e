"""Write a QualityResult where the run keeps it, and render it as a Markdown section of the run report.

    write_quality(result, "runs/my-run")       # runs/my-run/quality/verdicts.jsonl and summary.json
    markdown_section(result.summary())         # "## Rollout health" with a table per check, per environment, worst
    check_table(result.summary())              # the per-check table as rows (the Prefect table artifact)

`verdicts.jsonl` has one line per checked rollout, in the order the rows were read:
    {"rollout_id": "3f9c...", "_ng_task_index": 7, "_ng_rollout_index": 3, "verdict": "unhealthy",
     "checks": ["runaway_generation"], "evidence": {"runaway_generation": "at the token limit: \\"ha \\" ×412 ..."}}
Lines are built by polars and written as one column (no per-row Python), through fsspec for any storage.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import fsspec
import orjson
import polars as pl

from ..report.markdown import escape
from .config import UNHEALTHY
from .engine import QualityResult

QUALITY_DIR = "quality"
VERDICTS_FILE = "verdicts.jsonl"
SUMMARY_FILE = "summary.json"


WRITE_ROWS = 100_000  # verdict lines built and written this many at a time


def verdict_lines(result: QualityResult, at: pl.Series | None = None) -> pl.Series:
    """The lines of verdicts.jsonl (JSON text, without newlines), of every row or of the row indices `at`."""
    verdicts = result.verdicts(at)
    head = verdicts.select(
        pl.struct("rollout_id", "_ng_task_index", "_ng_rollout_index", "verdict", "checks")
        .struct.json_encode()
        .str.strip_suffix("}")
        .alias("head"),
        "evidence",
    )
    return head.select(pl.concat_str("head", pl.lit(',"evidence":'), "evidence", pl.lit("}")).alias("line"))["line"]


def write_quality(
    result: QualityResult,
    run: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write `<run>/quality/verdicts.jsonl` and `<run>/quality/summary.json`; returns {file name: URL}.

    Each file is written under a temporary name and then moved over the target: a reader never sees half a file.
    Verdict lines are built and written WRITE_ROWS at a time."""
    fs, root = fsspec.core.url_to_fs(run, **dict(storage_options or {}))
    folder = f"{root.rstrip('/')}/{QUALITY_DIR}"
    fs.makedirs(folder, exist_ok=True)
    base = f"{run.rstrip('/')}/{QUALITY_DIR}"
    target = f"{folder}/{VERDICTS_FILE}"
    with fs.open(f"{target}.tmp", "wb") as handle:
        for start in range(0, result.checked, WRITE_ROWS):
            at = pl.int_range(start, min(start + WRITE_ROWS, result.checked), eager=True)
            verdict_lines(result, at).to_frame().write_csv(handle, include_header=False, quote_style="never")
    fs.mv(f"{target}.tmp", target)
    payload = summary if summary is not None else result.summary()
    target = f"{folder}/{SUMMARY_FILE}"
    with fs.open(f"{target}.tmp", "wb") as handle:
        handle.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
    fs.mv(f"{target}.tmp", target)
    return {VERDICTS_FILE: f"{base}/{VERDICTS_FILE}", SUMMARY_FILE: f"{base}/{SUMMARY_FILE}"}


def _read(run: str, name: str, storage_options: Mapping[str, Any] | None) -> bytes:
    fs, root = fsspec.core.url_to_fs(run, **dict(storage_options or {}))
    with fs.open(f"{root.rstrip('/')}/{QUALITY_DIR}/{name}", "rb") as handle:
        data: bytes = handle.read()
    return data


def read_summary(run: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`<run>/quality/summary.json`."""
    summary: dict[str, Any] = orjson.loads(_read(run, SUMMARY_FILE, storage_options))
    return summary


VERDICTS_SCHEMA = {
    "rollout_id": pl.String(),
    "_ng_task_index": pl.Int64(),
    "_ng_rollout_index": pl.Int64(),
    "verdict": pl.String(),
    "checks": pl.List(pl.String()),
}


def read_verdicts(run: str, *, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """`<run>/quality/verdicts.jsonl` without its evidence (rollout_id, indices, verdict, checks): what a filter
    needs to drop rollouts checked earlier without checking them again."""
    data = _read(run, VERDICTS_FILE, storage_options)
    return pl.read_ndjson(io.BytesIO(data), schema=VERDICTS_SCHEMA) if data else pl.DataFrame(schema=VERDICTS_SCHEMA)


def flagged(verdicts: pl.DataFrame, checks: Sequence[str] | None = None) -> pl.DataFrame:
    """The verdict rows that any of `checks` fired on (all unhealthy rows when None): `--drop-unhealthy [CHECK,...]`."""
    if checks is None:
        return verdicts.filter(pl.col("verdict") == UNHEALTHY)
    wanted = list(checks)
    return verdicts.filter(pl.col("checks").list.eval(pl.element().is_in(wanted)).list.any())


def cell(value: Any) -> str:
    """A Markdown table cell (the one rule of rollouts/report/markdown.py); None is empty."""
    return "" if value is None else escape(value)


def _row(values: list[Any]) -> str:
    return "| " + " | ".join(cell(v) for v in values) + " |"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def row_url(file: str, line: int) -> str:
    """A link to line `line` of a rollout file: its URL (`file://` for a local path) with a `#L<line>` anchor."""
    url = file if "://" in file else PurePosixPath(file).as_uri() if file.startswith("/") else quote(file)
    return f"{quote(url, safe=':/%@+,;=~&?')}#L{line}"


def _row_link(example: Mapping[str, Any]) -> str:
    """The worst-rollouts table's last cell: `file:line` linked to the row when the file is known."""
    file, line = example.get("file"), example.get("line")
    if not file:
        return f"row {line}"
    name = "/".join(str(file).rstrip("/").split("/")[-2:])  # the shard and its folder: rollouts/00000.jsonl
    return f"[`{name}:{line}`]({row_url(str(file), int(line or 0))})"


def check_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-check table of a summary as rows (a Prefect table artifact): check, fired, share, unobserved, first
    example's evidence, what fires it."""
    examples = summary.get("examples", {})
    rows = []
    for check_id, stats in summary["checks"].items():
        first = (examples.get(check_id) or [{}])[0]
        rows.append(
            {
                "check": check_id,
                "fired": stats["fired"],
                "share": _pct(stats["fraction"]),
                "unobserved": stats["unobserved"],
                "example": first.get("evidence", {}).get(check_id, ""),
                "what fires it": stats.get("description", ""),
            }
        )
    return rows


def markdown_section(summary: Mapping[str, Any], *, title: str = "## Rollout health") -> str:
    """The run report's health section, from a summary (`QualityResult.summary()` or a stored summary.json)."""
    verdicts, checked = summary["verdicts"], summary["checked"]
    out = [title, ""]
    out.append(
        f"{checked} rollouts checked: **{verdicts['unhealthy']} unhealthy ({_pct(summary['unhealthy_fraction'])})**, "
        f"{verdicts['unobserved']} unobserved, {verdicts['healthy']} healthy. "
        f"Failed rollouts (not checked): {summary['failed_not_checked']}; unreadable rows: {summary['bad_rows']}."
    )
    tasks = summary.get("tasks") or {}
    if tasks.get("always_unhealthy"):
        listed = ", ".join(
            f"{t['_ng_task_index']} ({', '.join(f'{c} ×{n}' for c, n in t['checks'].items())})"
            for t in tasks["always_unhealthy_tasks"]
        )
        more = " ..." if tasks["always_unhealthy"] > len(tasks["always_unhealthy_tasks"]) else ""
        out.append(
            f"Tasks whose every rollout is unhealthy: {tasks['always_unhealthy']} of {tasks['judged']} judged: "
            f"{listed}{more}."
        )
    if summary.get("inactive_checks"):
        out.append("")
        out.append(f"Checks that could judge no rollout of this run: {', '.join(summary['inactive_checks'])}.")
    out += [
        "",
        _row(["check", "fired", "share", "unobserved", "example", "what fires it"]),
        _row(["---", "---:", "---:", "---:", "---", "---"]),
    ]
    for check in check_table(summary):
        out.append(_row([f"`{check['check']}`", *list(check.values())[1:]]))
    environments = summary.get("environments", {})
    if environments:
        out += [
            "",
            "### By environment",
            "",
            _row(["environment", "rollouts", "unhealthy", "share", "top checks"]),
            _row(["---", "---:", "---:", "---:", "---"]),
        ]
        for env, stats in environments.items():
            top = sorted(((c, v["fired"]) for c, v in stats["checks"].items() if v["fired"]), key=lambda c: -c[1])[:3]
            out.append(
                _row(
                    [
                        env,
                        stats["rollouts"],
                        stats["unhealthy"],
                        _pct(stats["unhealthy_fraction"]),
                        ", ".join(f"{c} ({n})" for c, n in top),
                    ]
                )
            )
    worst = summary.get("worst", [])
    if worst:
        out += [
            "",
            "### Worst rollouts",
            "",
            _row(["rollout", "task", "repeat", "env", "checks", "evidence", "row"]),
            _row(["---", "---:", "---:", "---", "---", "---", "---"]),
        ]
        for example in worst:
            evidence = "; ".join(f"{c}: {text}" for c, text in example["evidence"].items())
            out.append(
                _row(
                    [
                        f"`{example['rollout_id']}`",
                        example["_ng_task_index"],
                        example["_ng_rollout_index"],
                        example["env"],
                        ", ".join(example["checks"]),
                        evidence,
                        _row_link(example),
                    ]
                )
            )
    return "\n".join(out) + "\n"

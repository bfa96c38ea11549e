"""The run-level summary of a QualityResult (`summary.json`): counts and fractions per check, overall and per
environment, the verdict counts, and examples (the worst rollouts, and a few per check) with where their rows are.

    {
      "rollouts_read": 1000, "checked": 990, "failed_not_checked": 10, "bad_rows": 0,
      "verdicts": {"healthy": 950, "unhealthy": 30, "unobserved": 10}, "unhealthy_fraction": 0.0303,
      "checks": {"empty_completion": {"fired": 12, "fraction": 0.0121, "evaluated": 990, "unobserved": 0,
                                      "description": "..."}, ...},
      "inactive_checks": ["token_count_mismatch"],      # judged no rollout (e.g. no token ids in the run)
      "environments": {"math": {"rollouts": 700, "unhealthy": 20, "unhealthy_fraction": 0.0286,
                                "checks": {"empty_completion": {"fired": 9, "fraction": 0.0129}, ...}}, ...},
      "tasks": {"tasks": 250, "judged": 250, "always_unhealthy": 2,       # judged: with enough rollouts to tell
                "always_unhealthy_tasks": [{"source", "_ng_task_index", "rollouts", "checks": {id: count}}]},
      "worst": [{"rollout_id", "_ng_task_index", "_ng_rollout_index", "env", "file", "line", "checks", "evidence"}],
      "examples": {"empty_completion": [{... the same fields ...}], ...},
      "config": {...QualityConfig...}
    }
Fractions are over checked rollouts (overall, or of the environment). A rollout without agent_ref.name counts under
the environment "(none)".
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
import polars as pl

from .checks_group import task_rollup
from .config import UNHEALTHY, UNOBSERVED, VERDICTS, QualityConfig
from .registry import fired_col


class Checked(Protocol):
    """What a summary reads of a check's result (`engine.QualityResult`)."""

    @property
    def table(self) -> pl.DataFrame: ...

    @property
    def checks(self) -> tuple[str, ...]: ...

    @property
    def config(self) -> QualityConfig: ...

    @property
    def failed(self) -> int: ...

    @property
    def lines(self) -> int: ...

    @property
    def bad_rows(self) -> int: ...

    @property
    def bad_examples(self) -> tuple[tuple[str, int, str], ...]: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...

    @property
    def descriptions(self) -> dict[str, str]: ...

    @property
    def checked(self) -> int: ...

    def count(self, verdict: str) -> int: ...

    def verdicts(self, at: pl.Series | None = None) -> pl.DataFrame: ...


NO_ENV = "(none)"
_ORDER = ["source", "file", "line", "task_index", "rollout_index"]


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _examples(rows: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in rows.iter_rows(named=True):
        out.append(
            {
                "rollout_id": row["rollout_id"],
                "_ng_task_index": row["_ng_task_index"],
                "_ng_rollout_index": row["_ng_rollout_index"],
                "env": row["env"],
                "file": row["file"],
                "line": row["line"],
                "checks": row["checks"],
                "evidence": orjson.loads(row["evidence"]),
            }
        )
    return out


def build_summary(result: Checked) -> dict[str, Any]:
    table, checked, config = result.table, result.checked, result.config
    checks: dict[str, Any] = {}
    for check_id in result.checks:
        column = table[fired_col(check_id)]
        fired, unobserved = int(column.fill_null(False).sum()), column.null_count()
        checks[check_id] = {
            "fired": fired,
            "fraction": _fraction(fired, checked),
            "evaluated": checked - unobserved,
            "unobserved": unobserved,
            "description": result.descriptions.get(check_id, ""),
        }
    inactive = [c for c, v in checks.items() if checked and v["evaluated"] == 0]

    environments: dict[str, Any] = {}
    if checked:
        per_env = (
            table.group_by(pl.col("env").fill_null(NO_ENV))
            .agg(
                rollouts=pl.len(),
                unhealthy=(pl.col("verdict") == UNHEALTHY).sum(),
                unobserved=(pl.col("verdict") == UNOBSERVED).sum(),
                **{f"n_{c}": pl.col(fired_col(c)).fill_null(False).sum() for c in result.checks},
            )
            .sort("env")
        )
        for row in per_env.iter_rows(named=True):
            n = row["rollouts"]
            environments[row["env"]] = {
                "rollouts": n,
                "unhealthy": row["unhealthy"],
                "unobserved": row["unobserved"],
                "unhealthy_fraction": _fraction(row["unhealthy"], n),
                "checks": {c: {"fired": row[f"n_{c}"], "fraction": _fraction(row[f"n_{c}"], n)} for c in result.checks},
            }

    indexed = table.with_row_index("_at")
    worst = (
        indexed.filter(pl.col("verdict") == UNHEALTHY)
        .sort([pl.col("checks").list.len(), *_ORDER], descending=[True] + [False] * len(_ORDER), nulls_last=True)
        .head(config.worst_examples)["_at"]
    )
    examples = {}
    for check_id in result.checks:
        hits = indexed.filter(pl.col(fired_col(check_id)).fill_null(False))
        if hits.height and config.summary_examples:
            first = hits.sort(_ORDER, nulls_last=True).head(config.summary_examples)["_at"]
            examples[check_id] = _examples(result.verdicts(first))
    return {
        "rollouts_read": result.lines,
        "checked": checked,
        "failed_not_checked": result.failed,
        "bad_rows": result.bad_rows,
        "bad_row_examples": [{"file": f, "line": n, "reason": r} for f, n, r in result.bad_examples],
        "inputs": list(result.inputs),
        "verdicts": {v: result.count(v) for v in VERDICTS},
        "unhealthy_fraction": _fraction(result.count(UNHEALTHY), checked),
        "checks": checks,
        "inactive_checks": inactive,
        "environments": environments,
        "tasks": task_rollup(table, result.checks, config.worst_examples),
        "worst": _examples(result.verdicts(worst)),
        "examples": examples,
        "config": config.model_dump(mode="json"),
    }

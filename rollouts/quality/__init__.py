"""Rollout health checks: find rollouts no trainer should see (empty answers, loops to the token limit, leaked
reasoning, malformed tool calls, repeated tool errors, miscounted tokens, identical groups, broken tasks).

    from rollouts.quality import QualityConfig, check_path, write_quality, markdown_section

    result = check_path("runs/my-run", QualityConfig(skip_checks=("identical_group",)))
    write_quality(result, "runs/my-run")            # quality/verdicts.jsonl + quality/summary.json
    print(markdown_section(result.summary()))
    drop = result.unhealthy(["runaway_generation", "empty_completion"])   # keys of rollouts to filter out

Polars throughout, streaming chunk by chunk; no Prefect. Checks live in a registry (`register`), one function over
the check frame each; docs/quality.md lists them, their options and how to add one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import HEALTHY, UNHEALTHY, UNOBSERVED, VERDICTS, QualityConfig

if TYPE_CHECKING:
    from .engine import QualityResult, check_chunk, check_path, check_run, finish
    from .frame import FRAME_SCHEMA, KEPT_COLUMNS
    from .loader import RolloutReader, discover, frame_of_rows, load_frame
    from .registry import (
        Check,
        UnknownCheckError,
        get_check,
        register,
        registered,
        require_known_checks,
        selected_checks,
        unregister,
    )
    from .report import (
        check_table,
        flagged,
        markdown_section,
        read_summary,
        read_verdicts,
        verdict_lines,
        write_quality,
    )

# The rest loads polars (~0.2 s): on first use, not when a command's --help imports QualityConfig.
_LAZY = {
    **dict.fromkeys(("QualityResult", "check_chunk", "check_path", "check_run", "finish"), "engine"),
    **dict.fromkeys(("FRAME_SCHEMA", "KEPT_COLUMNS"), "frame"),
    **dict.fromkeys(("RolloutReader", "discover", "frame_of_rows", "load_frame"), "loader"),
    **dict.fromkeys(
        (
            "Check",
            "UnknownCheckError",
            "get_check",
            "register",
            "registered",
            "require_known_checks",
            "selected_checks",
            "unregister",
        ),
        "registry",
    ),
    **dict.fromkeys(
        (
            "check_table",
            "flagged",
            "markdown_section",
            "read_summary",
            "read_verdicts",
            "verdict_lines",
            "write_quality",
        ),
        "report",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


BUILTIN_CHECKS = (
    "empty_completion",
    "zero_completion_tokens",
    "token_count_mismatch",
    "runaway_generation",
    "repetition_loop",
    "reasoning_leak",
    "malformed_tool_call",
    "tool_error_loop",
    "identical_group",
    "task_always_unhealthy",
)

__all__ = [
    "BUILTIN_CHECKS",
    "FRAME_SCHEMA",
    "HEALTHY",
    "KEPT_COLUMNS",
    "UNHEALTHY",
    "UNOBSERVED",
    "VERDICTS",
    "Check",
    "QualityConfig",
    "QualityResult",
    "RolloutReader",
    "UnknownCheckError",
    "check_chunk",
    "check_table",
    "check_path",
    "check_run",
    "discover",
    "finish",
    "flagged",
    "frame_of_rows",
    "get_check",
    "load_frame",
    "markdown_section",
    "read_summary",
    "read_verdicts",
    "register",
    "registered",
    "require_known_checks",
    "selected_checks",
    "unregister",
    "verdict_lines",
    "write_quality",
]

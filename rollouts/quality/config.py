"""QualityConfig: which health checks run and every threshold they use, one typed field each.

The config is a frozen pydantic model: every field has a description (the command line turns each into a flag) and
bounds where a value can be wrong. Check functions read their thresholds from it and nothing else, so a run's
verdicts are reproducible from the config recorded in `summary.json`.

A check's options are named after the check (`loop_*` serve `runaway_generation` and `repetition_loop`, which share
one loop detector). `checks` / `skip_checks` choose which registered checks run; ids are validated against the
registry when a run is checked, so checks registered later (see docs/quality.md) can be named here too.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from rollouts.options import FORM_MODEL

HEALTHY, UNHEALTHY, UNOBSERVED = "healthy", "unhealthy", "unobserved"
VERDICTS = (HEALTHY, UNHEALTHY, UNOBSERVED)


class QualityConfig(BaseModel):
    """Thresholds of the rollout health checks (see docs/quality.md for what fires each check)."""

    model_config = FORM_MODEL  # no "None" in the UI form

    checks: tuple[str, ...] | None = Field(
        default=None, description="ids of the checks to run (default, or an empty list: every registered check)"
    )
    skip_checks: tuple[str, ...] = Field(
        default=(), description="ids of checks not to run, e.g. identical_group for a temperature-0 run"
    )

    # empty_completion
    empty_min_chars: int = Field(
        default=1,
        ge=1,
        description="empty_completion: a final turn without a tool call and with fewer non-blank characters "
        "of answer text than this is empty",
    )

    # the token limit, for runaway_generation / repetition_loop
    limit_finish_reasons: tuple[str, ...] = Field(
        default=("length", "max_tokens", "max_output_tokens"),
        description="finish reasons (of the last model call) that mean the generation hit its token limit",
    )
    limit_end_reasons: tuple[str, ...] = Field(
        default=("length", "max_rollout_tokens"),
        description="agent end reasons that mean the rollout hit a token limit",
    )

    # runaway_generation / repetition_loop: the loop detector
    loop_tail_chars: int = Field(
        default=2000,
        ge=64,
        description="loops: how many characters at the end of the final turn's model text are examined",
    )
    loop_min_chars: int = Field(
        default=200, ge=16, description="loops: a final turn with less model text than this is never a loop"
    )
    loop_probe_chars: int = Field(
        default=24,
        ge=4,
        description="loops: the text's last this-many characters are looked for earlier in the tail; the "
        "distance to their previous occurrence is the loop's period",
    )
    loop_min_repeats: int = Field(
        default=4, ge=2, description="loops: the repeated span must occur at least this many times in the tail"
    )
    loop_min_coverage: float = Field(
        default=0.6, gt=0, le=1, description="loops: the repetitions must cover at least this fraction of the tail"
    )
    loop_ignore_digits: bool = Field(
        default=True,
        description="loops: compare text with every digit replaced by 0, so a counter that keeps increasing "
        "('step 17', 'step 18', ...) is still a loop",
    )

    # reasoning_leak
    reasoning_markers: tuple[str, ...] = Field(
        default=("<think>", "</think>"),
        description="reasoning_leak: markers that must never appear in the final answer",
    )
    reasoning_leak_min_chars: int = Field(
        default=48,
        ge=8,
        description="reasoning_leak: the first this-many characters of the final turn's reasoning, found "
        "verbatim in its answer, are a leak (shorter reasoning is not compared)",
    )

    # malformed_tool_call
    tool_schema: bool = Field(
        default=True,
        description="malformed_tool_call: check arguments against the tool's JSON schema (required keys, "
        "types, enums, unknown keys when additionalProperties is false); off: only JSON validity "
        "and unknown tool names",
    )

    # tool_error_loop
    tool_error_pattern: str = Field(
        default=r'(?i)^\s*(?:error\b|exception\b|\{\s*"error"\s*:|traceback \(most recent call last\))',
        description="tool_error_loop: a regular expression (Rust syntax) that marks a tool output as an error",
    )
    tool_error_min_repeats: int = Field(
        default=3,
        ge=2,
        description="tool_error_loop: the same error from the same tool this many times in one rollout fires",
    )
    tool_error_ignore_digits: bool = Field(
        default=True, description="tool_error_loop: errors that differ only in their digits are the same error"
    )

    # token_count_mismatch
    token_count_tolerance: int = Field(
        default=0,
        ge=0,
        description="token_count_mismatch: the largest accepted difference between the number of "
        "generation token ids and usage.output_tokens",
    )

    # identical_group / task_always_unhealthy
    group_min_size: int = Field(
        default=2, ge=2, description="identical_group: groups with fewer rollouts than this are not judged"
    )
    task_min_rollouts: int = Field(
        default=2, ge=1, description="task_always_unhealthy: tasks with fewer checked rollouts than this are not judged"
    )

    # evidence and summary
    evidence_chars: int = Field(
        default=120, ge=16, description="longest quoted span (repeated text, bad argument...) in an evidence string"
    )
    summary_examples: int = Field(default=3, ge=0, description="summary.json: examples kept per check")
    worst_examples: int = Field(
        default=10, ge=0, description="summary.json and the report: the rollouts with the most checks fired"
    )

    max_unhealthy_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="a collection fails when more of its checked rollouts than this fraction are unhealthy (its "
        "reason names the top checks); default: never",
    )

    @field_validator(
        "checks", "skip_checks", "limit_finish_reasons", "limit_end_reasons", "reasoning_markers", mode="before"
    )
    @classmethod
    def _comma_lists(cls, value: object) -> object:
        # the command line gives each flag's values as a list of comma lists
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(part.strip() for item in value for part in item.split(",") if part.strip())
        return value

    @field_validator("checks")
    @classmethod
    def _no_checks_is_every_check(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        # the UI's run form shows `checks` as a list and may send it empty: that is not "run no check"
        # (skip_checks says which not to run)
        return value or None

    @field_validator("tool_error_pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("reasoning_markers", "limit_finish_reasons", "limit_end_reasons")
    @classmethod
    def _non_empty_items(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not item for item in value):
            raise ValueError("empty strings are not allowed")
        return value

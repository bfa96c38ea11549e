"""Checks on what the model generated: empty answers, zero or miscounted tokens, loops, leaked reasoning.

Every check here is a `rollout` check: a polars expression per row over the check frame (frame.FRAME_SCHEMA).

The loop detector (runaway_generation, repetition_loop) works on the tail of each part of the final turn (answer,
reasoning, tool-call arguments), reversed so that "the text's last characters" is a prefix: the last
`loop_probe_chars` characters (the probe) are searched for earlier in the tail; the distance to their previous
occurrence is the loop's period and the tail's last `period` characters its unit. The unit's non-overlapping
occurrences times its length, over the tail's length, is how much of the tail the loop covers. Natural text ends with
a probe that occurs once; a model stuck in a loop ends with a unit repeated until the token limit (runaway) or until
it stops anyway (repetition). All of it is vectorised string work (reverse, splitn, count_matches with per-row literal
patterns), run only on the rows each check needs.
"""

from __future__ import annotations

import polars as pl

from .config import QualityConfig
from .registry import quoted, register, result

S = pl.String()


def _chars(expr: pl.Expr) -> pl.Expr:
    return expr.str.len_chars().cast(pl.Int64)


@register("empty_completion", needs=("items", "final_text", "final_reasoning", "final_calls"))
def empty_completion(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """No answer text and no tool call in the final turn (reasoning alone, blank text, or no output at all)."""
    answer = pl.col("final_text")
    blank = _chars(answer.str.strip_chars()) < config.empty_min_chars
    fired = (pl.col("final_calls") == 0) & blank
    evidence = (
        pl.when(pl.col("items") == 0)
        .then(pl.lit("no output items"))
        .when(pl.col("final_reasoning") != "")
        .then(pl.format("the final turn has only reasoning ({} chars)", _chars(pl.col("final_reasoning"))))
        .when(answer != "")
        .then(pl.lit("answer too short: ") + quoted(answer, config.evidence_chars))
        .otherwise(pl.lit("the final turn has no text and no tool call"))
    )
    return result(frame, fired, evidence)


@register("zero_completion_tokens", needs=("output_tokens", "items", "final_text"))
def zero_completion_tokens(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """usage.output_tokens is 0 (unobserved without usage)."""
    tokens = pl.col("output_tokens")
    fired = pl.when(tokens.is_not_null()).then(tokens == 0)
    evidence = pl.format(
        "usage.output_tokens = 0 ({} output items, {} chars of answer)",
        pl.col("items"),
        _chars(pl.col("final_text")),
    )
    return result(frame, fired, evidence)


@register("token_count_mismatch", needs=("gen_tokens", "output_tokens"))
def token_count_mismatch(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """Generation token ids are present and their count differs from usage.output_tokens by more than
    `token_count_tolerance` (unobserved without token ids or usage)."""
    ids, usage = pl.col("gen_tokens"), pl.col("output_tokens")
    fired = pl.when(ids.is_not_null() & usage.is_not_null()).then((ids - usage).abs() > config.token_count_tolerance)
    evidence = pl.format("{} generation token ids, usage.output_tokens = {}", ids, usage)
    return result(frame, fired, evidence)


def hit_limit(config: QualityConfig) -> pl.Expr:
    """True when the rollout stopped at a token limit, false when it stopped otherwise, null when unknown."""
    finish, incomplete, end = pl.col("finish_reason"), pl.col("incomplete_reason"), pl.col("end_reason")
    known = finish.is_not_null() | end.is_not_null() | pl.col("response_status").is_not_null()
    hit = (
        finish.is_in(list(config.limit_finish_reasons)).fill_null(False)
        | (incomplete == "max_output_tokens").fill_null(False)
        | end.is_in(list(config.limit_end_reasons)).fill_null(False)
    )
    return pl.when(known).then(hit)


LOOP_PARTS = (("final_text", "answer"), ("final_reasoning", "reasoning"), ("final_arguments", "tool-call arguments"))


def loops(text: pl.Series, config: QualityConfig) -> pl.DataFrame:
    """`loop` (Boolean) and `loop_evidence` for every text of `text` (see the module docstring)."""
    tail = pl.col("text").str.strip_chars_end().str.slice(-config.loop_tail_chars)
    norm = tail.str.replace_all(r"\d", "0") if config.loop_ignore_digits else tail
    size = _chars(pl.col("tail"))
    rev = pl.col("rev")
    before = rev.str.slice(1).str.splitn(rev.str.slice(0, config.loop_probe_chars), 2)
    work = (
        text.rename("text")
        .to_frame()
        .lazy()
        .select(tail=tail, rev=norm.str.reverse())
        .with_columns(before=before)
        .with_columns(
            period=pl.when(pl.col("before").struct.field("field_1").is_not_null()).then(
                _chars(pl.col("before").struct.field("field_0")) + 1
            ),
        )
        .with_columns(repeats=rev.str.count_matches(rev.str.slice(0, pl.col("period")), literal=True).cast(pl.Int64))
        .with_columns(coverage=pl.col("repeats") * pl.col("period") / size)
    )
    loop = (
        (size >= config.loop_min_chars)
        & (pl.col("repeats") >= config.loop_min_repeats)
        & (pl.col("coverage") >= config.loop_min_coverage)
    ).fill_null(False)
    evidence = pl.format(
        "{} ×{} covers {}% of the last {} chars",
        quoted(pl.col("tail").str.tail(pl.col("period")), config.evidence_chars),
        pl.col("repeats"),
        (pl.col("coverage").clip(upper_bound=1) * 100).round(0).cast(pl.Int64),
        size,
    )
    return work.select(loop=loop, loop_evidence=pl.when(loop).then(evidence)).collect()


def _loop_check(frame: pl.DataFrame, config: QualityConfig, at_limit: bool) -> pl.DataFrame:
    """Loops in the answer, reasoning or tool-call arguments of the final turn, on the rows at (or not at) a limit.

    Each part is examined on its own, so a reasoning loop followed by a short answer is still found."""
    limit = frame.select(hit=hit_limit(config))["hit"]
    wanted = limit.fill_null(False) if at_limit else ~limit.fill_null(False)
    fired = pl.Series([False] * frame.height, dtype=pl.Boolean)
    evidence = pl.Series([None] * frame.height, dtype=pl.String)
    for column, label in LOOP_PARTS:
        at = (wanted & (frame[column].str.len_chars() >= config.loop_min_chars) & ~fired).arg_true()
        if at.len() == 0:
            continue
        found = loops(frame[column].gather(at), config)
        hits = at.filter(found["loop"])
        fired = fired.scatter(hits, True)
        evidence = evidence.scatter(hits, (label + ": " + found["loop_evidence"].drop_nulls()))
    observed = limit.is_not_null() if at_limit else pl.Series([True] * frame.height, dtype=pl.Boolean)
    out = pl.DataFrame({"fired": fired, "evidence": evidence, "observed": observed})
    return out.select(fired=pl.when(pl.col("observed")).then(pl.col("fired")), evidence="evidence")


_LOOP_NEEDS = (
    "finish_reason",
    "response_status",
    "incomplete_reason",
    "end_reason",
    "final_text",
    "final_reasoning",
    "final_arguments",
)


@register("runaway_generation", needs=_LOOP_NEEDS)
def runaway_generation(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The generation hit its token limit (finish reason length, response incomplete at max_output_tokens, agent end
    reason length / max_rollout_tokens) and the final turn's answer, reasoning or tool-call arguments end in a loop:
    one span repeated over most of their tail (unobserved when the row says nothing about why it stopped)."""
    out = _loop_check(frame, config, at_limit=True)
    return out.with_columns(evidence=pl.lit("at the token limit, ") + pl.col("evidence"))


@register("repetition_loop", needs=_LOOP_NEEDS)
def repetition_loop(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The same loop as runaway_generation in a rollout that did not hit a token limit (the model stopped inside its
    loop, or looped in its reasoning and then answered)."""
    return _loop_check(frame, config, at_limit=False)


@register("reasoning_leak", needs=("final_text", "final_reasoning"))
def reasoning_leak(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The final answer holds a reasoning marker (`<think>`, `</think>` by default) or repeats the final turn's
    reasoning verbatim from its start (its first `reasoning_leak_min_chars` characters)."""
    # Only the start: reasoning often ends on its conclusion (a grid, a list, "the answer is ..."), which the answer
    # then restates word for word; NeMo Gym's own example rollouts (arc_agi, graphwalks, xlam_fc) do.
    answer = pl.col("final_text")
    markers = list(config.reasoning_markers)
    marker = answer.str.extract_many(markers).list.first() if markers else pl.lit(None, S)
    reasoning = pl.col("final_reasoning").str.strip_chars()
    head = reasoning.str.slice(0, config.reasoning_leak_min_chars)
    repeated = (_chars(reasoning) >= config.reasoning_leak_min_chars) & answer.str.contains(head, literal=True)
    fired = marker.is_not_null() | repeated.fill_null(False)
    evidence = (
        pl.when(marker.is_not_null())
        .then(pl.lit("the answer contains ") + quoted(marker, config.evidence_chars))
        .otherwise(pl.lit("the answer repeats the reasoning: ") + quoted(head, config.evidence_chars))
    )
    return result(frame, fired, evidence)

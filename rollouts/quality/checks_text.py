"""Checks on what the model generated: empty answers, zero or miscounted tokens, loops, leaked reasoning.

Every check here is a `rollout` check: a polars expression per row over the check frame (frame.FRAME_SCHEMA).

The loop detector (runaway_generation, repetition_loop) works on the tail of the final turn's model text, reversed
so that "the text's last characters" is a prefix: the last `loop_probe_chars` characters (the probe) are searched for
earlier in the tail; the distance to their previous occurrence is the loop's period and the tail's last `period`
characters its unit. The unit's non-overlapping occurrences times its length, over the tail's length, is how much of
the tail the loop covers. Natural text ends with a probe that occurs once; a model stuck in a loop ends with a
unit repeated until the token limit (runaway) or until it stops anyway (repetition). All of it is vectorised string
work (reverse, splitn, count_matches with per-row literal patterns), run only on the rows each check needs.
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


@register("zero_completion_tokens", needs=("output_tokens", "items", "final_model_text"))
def zero_completion_tokens(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """usage.output_tokens is 0 (unobserved without usage)."""
    tokens = pl.col("output_tokens")
    fired = pl.when(tokens.is_not_null()).then(tokens == 0)
    evidence = pl.format(
        "usage.output_tokens = 0 ({} output items, {} chars in the final turn)",
        pl.col("items"),
        _chars(pl.col("final_model_text")),
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
    known = finish.is_not_null() | incomplete.is_not_null() | end.is_not_null()
    hit = (
        finish.is_in(list(config.limit_finish_reasons)).fill_null(False)
        | (incomplete == "max_output_tokens").fill_null(False)
        | end.is_in(list(config.limit_end_reasons)).fill_null(False)
    )
    return pl.when(known).then(hit)


def loops(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """`loop` (Boolean) and `loop_evidence` for every row of `frame`, from its `final_model_text` (module docstring)."""
    tail = pl.col("final_model_text").str.strip_chars_end().str.slice(-config.loop_tail_chars)
    norm = tail.str.replace_all(r"\d", "0") if config.loop_ignore_digits else tail
    size = _chars(pl.col("tail"))
    work = (
        frame.lazy()
        .select(tail=tail, rev=norm.str.reverse())
        .with_columns(
            probe=pl.col("rev").str.slice(0, config.loop_probe_chars),
        )
        .with_columns(
            before=pl.col("rev").str.slice(1).str.splitn(pl.col("probe"), 2),
        )
        .with_columns(
            period=pl.when(pl.col("before").struct.field("field_1").is_not_null()).then(
                _chars(pl.col("before").struct.field("field_0")) + 1
            ),
        )
        .with_columns(
            repeats=pl.col("rev")
            .str.count_matches(pl.col("rev").str.slice(0, pl.col("period")), literal=True)
            .cast(pl.Int64),
        )
        .with_columns(coverage=pl.col("repeats") * pl.col("period") / size)
    )
    loop = (
        (size >= config.loop_min_chars)
        & (pl.col("repeats") >= config.loop_min_repeats)
        & (pl.col("coverage") >= config.loop_min_coverage)
    ).fill_null(False)
    unit = pl.col("tail").str.tail(pl.col("period"))
    evidence = pl.format(
        "{} ×{} covers {}% of the last {} chars",
        quoted(unit, config.evidence_chars),
        pl.col("repeats"),
        (pl.col("coverage").clip(upper_bound=1) * 100).round(0).cast(pl.Int64),
        size,
    )
    return work.select(loop=loop, loop_evidence=pl.when(loop).then(evidence)).collect()


def _loop_check(frame: pl.DataFrame, config: QualityConfig, at_limit: bool) -> pl.DataFrame:
    limit = frame.select(hit=hit_limit(config))["hit"]
    wanted = limit.fill_null(False) if at_limit else ~limit.fill_null(False)
    rows = frame.with_row_index("_at").filter(
        wanted & (frame["final_model_text"].str.len_chars() >= config.loop_min_chars)
    )
    found = loops(rows, config).with_columns(_at=rows["_at"])
    merged = frame.with_row_index("_at").select("_at").join(found, on="_at", how="left").sort("_at")
    observed = limit.is_not_null() if at_limit else pl.Series([True] * frame.height, dtype=pl.Boolean)
    fired = merged["loop"].fill_null(False)
    out = pl.DataFrame({"fired": fired, "evidence": merged["loop_evidence"], "observed": observed})
    return out.select(fired=pl.when(pl.col("observed")).then(pl.col("fired")), evidence="evidence")


@register("runaway_generation", needs=("finish_reason", "incomplete_reason", "end_reason", "final_model_text"))
def runaway_generation(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The generation hit its token limit (finish reason length, response incomplete at max_output_tokens, agent end
    reason length / max_rollout_tokens) and its tail is a loop: one span repeated over most of it (unobserved when
    the row says nothing about why it stopped)."""
    out = _loop_check(frame, config, at_limit=True)
    return out.with_columns(evidence=pl.lit("at the token limit: ") + pl.col("evidence"))


@register("repetition_loop", needs=("finish_reason", "incomplete_reason", "end_reason", "final_model_text"))
def repetition_loop(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The same loop as runaway_generation in a rollout that did not hit a token limit (the model stopped inside or
    after its loop)."""
    return _loop_check(frame, config, at_limit=False)


@register("reasoning_leak", needs=("final_text", "final_reasoning"))
def reasoning_leak(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
    """The final answer holds a reasoning marker (`<think>`, `</think>` by default) or repeats the final turn's
    reasoning verbatim (its first or last `reasoning_leak_min_chars` characters)."""
    answer = pl.col("final_text")
    markers = list(config.reasoning_markers)
    marker = answer.str.extract_many(markers).list.first() if markers else pl.lit(None, S)
    reasoning = pl.col("final_reasoning").str.strip_chars()
    size = config.reasoning_leak_min_chars
    head, tail = reasoning.str.slice(0, size), reasoning.str.tail(size)
    long_enough = _chars(reasoning) >= size
    repeated = long_enough & (answer.str.contains(head, literal=True) | answer.str.contains(tail, literal=True))
    span = pl.when(answer.str.contains(head, literal=True)).then(head).otherwise(tail)
    fired = marker.is_not_null() | repeated.fill_null(False)
    evidence = (
        pl.when(marker.is_not_null())
        .then(pl.lit("the answer contains ") + quoted(marker, config.evidence_chars))
        .otherwise(pl.lit("the answer repeats the reasoning: ") + quoted(span, config.evidence_chars))
    )
    return result(frame, fired, evidence)

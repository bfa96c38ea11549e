"""Samples per repair policy: generated ids and log-probabilities kept exactly, the mask exactly on them (sim episodes
over loopback HTTP, and hypothesis over random multi-turn episodes with random drift)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollouts.sim import SimConfig, serve_in_thread
from rollouts.tokens.check import TRUNCATION, Call, calls_of, check_calls
from rollouts.tokens.samples import POLICIES, Sample, build_samples, infer_turn_end, splice_cut
from tests.servers import episodes as sim_episodes
from tests.servers.episodes import episodes

DRIFTS = {
    "none": {"reasoning": False},
    "retokenize-args": {"drift_retokenize_args": True, "reasoning": False},
    "strip-think": {"drift_strip_think": True},
    "turn-token": {"drift_turn_token": True, "reasoning": False},
    "truncation": {"reasoning": False},
}


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, options in DRIFTS.items():
        url, stop = serve_in_thread(SimConfig(latency_ms=0, **options))
        sampling = {"truncate_prompt_tokens": 40} if name == "truncation" else None
        try:
            out[name] = episodes(
                url, "responses" if name == "strip-think" else "chat", tasks=2, repeats=2, turns=2, sampling=sampling
            )
        finally:
            stop()
    return out


def generated(samples: list[Sample]) -> tuple[list[int], list[float | None]]:
    """The tokens under the mask, in order, with their log-probabilities."""
    ids: list[int] = []
    values: list[float | None] = []
    for sample in samples:
        for token, bit, value in zip(sample.input_ids, sample.loss_mask, sample.logprobs, strict=True):
            if bit:
                ids.append(token)
                values.append(value)
            else:
                assert value is None
    return ids, values


def server_generated(calls: list[Call]) -> tuple[list[int], list[float | None]]:
    return [i for c in calls for i in c.generation], [v for c in calls for v in c.logprobs or []]


@pytest.mark.parametrize("name", list(DRIFTS))
@pytest.mark.parametrize("policy", ["splice", "split", "truncate"])
def test_generated_ids_and_logprobs_are_exactly_the_servers(
    rows: dict[str, list[dict[str, Any]]], name: str, policy: str
) -> None:
    for row in rows[name]:
        calls = calls_of(row)
        check = check_calls(calls)
        assert check.contiguous == (name == "none")
        outcome = build_samples(calls, check, policy)  # type: ignore[arg-type]
        kept = calls if policy != "truncate" or check.contiguous else calls[: check.breaks[0].call]
        assert generated(outcome.samples) == server_generated(kept)
        raw_ids, raw_values = sim_episodes.server_generated(row)  # the reply bodies as the server sent them
        kept_tokens = sum(len(c.generation) for c in kept)
        assert generated(outcome.samples) == (raw_ids[:kept_tokens], raw_values[:kept_tokens])
        assert sum(sum(s.loss_mask) for s in outcome.samples) == sum(len(c.generation) for c in kept)
        if policy == "split":  # every sample starts with a prompt the server really saw, whole
            starts = [0] + [b.call for b in check.breaks]
            assert [s.segments[0].ids for s in outcome.samples] == [calls[k].prompt for k in starts]
        if check.contiguous or policy == "truncate":
            assert len(outcome.samples) == 1
            last = kept[-1]
            assert outcome.samples[0].input_ids == last.prompt + last.generation  # the server's own sequence


@pytest.mark.parametrize("name", ["retokenize-args", "strip-think", "turn-token"])
def test_splice_appends_only_the_new_tokens_after_the_previous_turn(
    rows: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for row in rows[name]:
        calls = calls_of(row)
        outcome = build_samples(calls, check_calls(calls), "splice")
        (sample,) = outcome.samples
        turn_end = infer_turn_end(calls)
        expected = calls[0].prompt + calls[0].generation
        for k in range(1, len(calls)):
            cut = splice_cut(calls[k - 1], calls[k].prompt, turn_end)
            assert cut is not None
            expected += calls[k].prompt[cut:] + calls[k].generation
        assert sample.input_ids == expected
        assert outcome.counts["spliced"] == len(check_calls(calls).breaks)
        shrank = outcome.counts["splice_history_shrank"]
        assert shrank == (outcome.counts["spliced"] if name in ("strip-think", "retokenize-args") else 0)


def test_splice_falls_back_to_split_on_truncation(rows: dict[str, list[dict[str, Any]]]) -> None:
    for row in rows["truncation"]:
        calls = calls_of(row)
        check = check_calls(calls)
        outcome = build_samples(calls, check, "splice")
        breaks = sum(b.kind == TRUNCATION for b in check.breaks)
        assert outcome.counts["splice_fallback_split"] == breaks and len(outcome.samples) == breaks + 1


# ----- random episodes ------------------------------------------------------------------------------------------------

EOT, TURN, HEADER = 999, 998, 997  # end of turn, a template-only boundary token, an assistant header
plain = st.integers(0, 900)


@st.composite
def episode(draw: st.DrawFn) -> list[Call]:
    """Calls whose prompts extend the previous context, each with one random drift (or none) applied to it."""
    prompt = draw(st.lists(plain, min_size=1, max_size=12)) + [HEADER]
    calls: list[Call] = []
    for _ in range(draw(st.integers(1, 5))):
        body = draw(st.lists(plain, min_size=0, max_size=10))
        generation = body + ([EOT] if draw(st.booleans()) or not body else [])
        logprobs = [-draw(st.floats(0, 20, allow_nan=False)) for _ in generation]
        calls.append(Call(prompt, generation, logprobs))
        context = prompt + generation + ([] if generation[-1:] == [EOT] else [EOT])
        drift = draw(st.sampled_from(["none", "none", "merge", "strip", "turn", "truncate", "rewrite"]))
        start, end = len(prompt), len(prompt) + len(body)
        if drift == "merge" and len(body) >= 2:
            at = draw(st.integers(start, end - 2))
            context = context[:at] + [draw(plain)] + context[at + 2 :]
        elif drift == "strip" and body:
            at = draw(st.integers(start, end - 1))
            context = context[:at] + context[at + draw(st.integers(1, end - at)) :]
        elif drift == "turn":
            context = context[:-1] + [TURN, EOT]
        elif drift == "truncate":
            context = context[draw(st.integers(1, len(context) - 1)) :]
        elif drift == "rewrite" and start > 1:
            at = draw(st.integers(0, start - 2))
            context = context[:at] + [draw(plain)] + context[at + 1 :]
        prompt = context + draw(st.lists(plain, max_size=6)) + [EOT, HEADER]
    return calls


@settings(max_examples=200, deadline=None)
@given(episode(), st.sampled_from(POLICIES))
def test_no_generated_token_is_lost_or_duplicated(calls: list[Call], policy: str) -> None:
    check = check_calls(calls)
    outcome = build_samples(calls, check, policy, turn_end=EOT)  # type: ignore[arg-type]
    counts = outcome.counts
    for sample in outcome.samples:
        assert len(sample.input_ids) == len(sample.loss_mask) == len(sample.logprobs)
    if policy in ("splice", "split") or check.contiguous:
        kept = calls
    elif policy == "truncate":
        kept = calls[: check.breaks[0].call]
    else:
        kept = []
    assert generated(outcome.samples) == server_generated(kept)
    assert (
        sum(sum(s.loss_mask) for s in outcome.samples)
        == sum(len(c.generation) for c in kept)
        == counts["generated_out"]
    )
    assert counts["generated_in"] == counts["generated_out"] + counts["generated_dropped"]
    assert [s.index for s in outcome.samples] == list(range(len(outcome.samples)))
    if check.contiguous:
        assert len(outcome.samples) == 1 and outcome.samples[0].input_ids == calls[-1].prompt + calls[-1].generation

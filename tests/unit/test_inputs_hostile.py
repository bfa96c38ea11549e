"""Hostile input: whatever a line holds, it is a prompt or a reject at its own line, never a crash or changed data."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollouts.envs import build_environments
from rollouts.inputs import iter_lines, parse_prompts, prompt_line

ENVS = build_environments()
GOOD = b'{"prompt": "What is 2 + 2?", "expected_answer": "4"}'
DEEP = b'{"prompt": "hi", "expected_answer": "1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
# Each bad line, with a piece of the reason it must be rejected for.
BAD: dict[bytes, str] = {
    b'{"prompt": "hi", "expected_answer": "1", "x": 123456789012345678901234567890}': "64 bits",
    b'{"prompt": "hi", "expected_answer": "1", "x": -9223372036854775809}': "64 bits",
    b'{"prompt": "hi", "expected_answer": "1", "_ng_task_index": 99999999999999999999}': "64 bits",
    b'{"prompt": "\\ud800", "expected_answer": "1"}': "surrogate",
    b'{"prompt": "hi", "expected_answer": "1", "x": "\\udfff tail", "n": 12345678901234567890123}': "",
    DEEP: "",
    b'{"prompt": "hi", "expected_answer": "1", "x": ' + b"[" * 300 + b"]" * 300 + b"}": "255 levels",
    b'{"prompt": "hi", "expected_answer": "1", "x": NaN}': "NaN",
    b'{"prompt": "hi", "expected_answer": "1", "x": Infinity}': "NaN and Infinity",
    b'{"prompt": "hi", "expected_answer": "1", "x": 1e999}': "infinity",
    b'{"prompt": "hi", "expected_answer": "1", "x": -1e999, "n": 12345678901234567890}': "infinity",
    b'{"prompt": "caf\xe9", "expected_answer": "1"}': "invalid UTF-8",
    b'{"prompt": "\xff\xfe", "expected_answer": "1"}': "invalid UTF-8",
    b'\xef\xbb\xbf{"prompt": "a BOM after line 1", "expected_answer": "1"}': "invalid JSON",
    b'{"prompt": "no answer for the math verifier"}': "expected_answer",
    b'{"prompt": "hi", "expected_answer": null}': "expected_answer",
    b'{"prompt": "hi", "expected_answer": "1"': "invalid JSON",
    b'["not", "an", "object"]': "JSON object",
    b'{"prompt": "hi", "expected_answer": "1", "agent_ref": {"name": "nowhere"}}': "unknown environment",
    b"\x00\x01\x02": "invalid JSON",
}


def run(tmp_path: Path, lines: list[bytes], prefix: bytes = b""):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(prefix + b"\n".join(lines) + b"\n")
    rejects: list[dict] = []
    prompts = list(parse_prompts(iter_lines(str(path)), default_env="math", known_envs=ENVS, on_reject=rejects.append))
    return prompts, rejects


@pytest.mark.parametrize("line", list(BAD), ids=lambda b: b[:40].decode("utf-8", "backslashreplace"))
def test_each_hostile_row_is_one_reject_at_its_line_and_the_rest_goes_on(tmp_path, line):
    prompts, rejects = run(tmp_path, [GOOD, line, GOOD.replace(b"2 + 2", b"3 + 3")])
    assert [p.line for p in prompts] == [1, 3]
    assert [r["line"] for r in rejects] == [2] and BAD[line] in rejects[0]["error"]
    orjson.dumps(rejects[0])  # the reject itself can be written


def test_a_bom_on_line_one_is_accepted_and_invalid_utf8_is_kept_visible(tmp_path):
    prompts, rejects = run(tmp_path, [GOOD, b'{"prompt": "caf\xe9", "expected_answer": "1"}'], prefix=b"\xef\xbb\xbf")
    assert [p.line for p in prompts] == [1] and prompts[0].row["expected_answer"] == "4"
    assert (
        rejects[0]["raw"] == '{"prompt": "caf\\xe9", "expected_answer": "1"}'
        and "byte offset 15" in rejects[0]["error"]
    )


def test_integers_within_64_bits_survive_exactly(tmp_path):
    big, low = 2**64 - 1, -(2**63)
    line = json.dumps({"prompt": "hi", "expected_answer": "1", "big": big, "low": low}).encode()
    prompts, rejects = run(tmp_path, [line])
    assert not rejects and prompts[0].row["big"] == big and prompts[0].row["low"] == low
    assert json.loads(prompt_line(prompts[0]))["row"]["big"] == big


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(st.characters(codec=None), max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def row_line(value) -> bytes:
    """A JSON line as a careless producer writes it (Python's json: NaN, Infinity and lone surrogates allowed)."""
    return json.dumps(value, ensure_ascii=True).encode()


lines = st.one_of(
    st.sampled_from(list(BAD)),
    st.just(GOOD),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    json_values.map(row_line),
    st.fixed_dictionaries(
        {"prompt": st.text(max_size=10), "expected_answer": json_values},
        optional={
            "agent_ref": st.fixed_dictionaries({"name": st.sampled_from(["math", "exact_match", "x"])}),
            "_ng_task_index": st.integers(min_value=-2, max_value=2**65),
            "x": json_values,
        },
    ).map(row_line),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(st.lists(lines, min_size=1, max_size=12), st.booleans())
def test_fuzzed_input_never_crashes_and_every_line_is_a_prompt_or_a_reject_at_its_line(tmp_path, rows, bom):
    prompts, rejects = run(tmp_path, rows, prefix=b"\xef\xbb\xbf" if bom else b"")
    # a BOM opening the file is dropped (a line of nothing else is then blank)
    first = [rows[0].removeprefix(b"\xef\xbb\xbf"), *rows[1:]] if not bom else rows
    numbered = {number: line for number, line in enumerate(first, start=1) if line.strip(b" \t\r\n")}
    accepted, rejected = [p.line for p in prompts], [r["line"] for r in rejects]
    assert sorted(accepted + rejected) == sorted(numbered) and not set(accepted) & set(rejected)
    assert {n for n, line in numbered.items() if line in BAD} <= set(rejected)
    for reject in rejects:
        orjson.dumps(reject)
    for prompt in prompts:
        text = numbered[prompt.line].removeprefix(b"\xef\xbb\xbf").decode()
        original = json.loads(text)
        stored = json.loads(prompt_line(prompt))["row"]
        for key, value in original.items():  # nothing the row said was changed on the way in
            if key != "prompt":
                assert stored[key] == value

"""Input rows: normalisation, rejects with line numbers, row ranges."""

from __future__ import annotations

import json

import pytest

from rollouts.errors import InputError, RowError
from rollouts.inputs import input_digest, iter_lines, normalise_row, parse_prompts


def parse(lines, **kwargs):
    rejects = []
    numbered = [(i + 1, line) for i, line in enumerate(lines)]
    kwargs.setdefault("default_env", "math")
    kwargs.setdefault("known_envs", {"math", "exact_match"})
    prompts = list(parse_prompts(iter(numbered), on_reject=rejects.append, **kwargs))
    return prompts, rejects


def test_nemo_gym_prompt_and_messages_rows_normalise_to_responses_create_params():
    gym = {"responses_create_params": {"input": "hi", "temperature": 0.3}, "agent_ref": {"name": "exact_match"}, "x": 1}
    assert normalise_row(gym) == gym
    assert normalise_row({"prompt": "2+2?", "expected_answer": "4"}) == {
        "responses_create_params": {"input": [{"role": "user", "content": "2+2?"}]},
        "expected_answer": "4",
    }
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert normalise_row({"messages": messages}) == {"responses_create_params": {"input": messages}}


@pytest.mark.parametrize(
    "row, message",
    [
        ([1, 2], "must be a JSON object"),
        ({"foo": 1}, "missing input"),
        ({"responses_create_params": {"tools": []}}, "has no `input`"),
        ({"responses_create_params": {"input": ""}}, "empty string"),
        ({"responses_create_params": {"input": []}}, "non-empty list"),
        ({"responses_create_params": {"input": [{"role": "user", "content": 3}]}}, "string `role`"),
        ({"responses_create_params": {"input": "x", "temperature": "hot"}}, "temperature` must be a number"),
        ({"responses_create_params": {"input": "x", "tools": {}}}, "tools` must be a list"),
        ({"prompt": "x", "agent_ref": "math"}, "agent_ref"),
        ({"prompt": "x", "_ng_task_index": -1}, "_ng_task_index"),
    ],
)
def test_malformed_rows_raise_row_errors(row, message):
    with pytest.raises(RowError, match=message):
        normalise_row(row)


def test_bad_rows_become_rejects_with_line_numbers_and_the_rest_goes_on():
    lines = [
        json.dumps({"prompt": "a"}),
        "{broken",
        json.dumps({"prompt": "b", "agent_ref": {"name": "nope"}}),
        json.dumps({"messages": [{"role": "user", "content": "c"}]}),
        json.dumps({"prompt": "d", "_ng_task_index": 0}),
    ]
    prompts, rejects = parse(lines)
    assert [p.task_index for p in prompts] == [0, 3]
    assert [p.line for p in prompts] == [1, 4]
    assert [r["line"] for r in rejects] == [2, 3, 5]
    assert rejects[0]["raw"] == "{broken" and "invalid JSON" in rejects[0]["error"]
    assert "unknown environment 'nope'" in rejects[1]["error"] and "--remote-env nope=URL" in rejects[1]["error"]
    assert "duplicate _ng_task_index 0" in rejects[2]["error"]
    assert prompts[0].row["agent_ref"] == {"name": "math"} and prompts[0].env == "math"


def test_row_range_and_limit_select_by_input_row():
    lines = [json.dumps({"prompt": str(i)}) for i in range(10)]
    prompts, _ = parse(lines, start=2, end=8, limit=3)
    assert [p.task_index for p in prompts] == [2, 3, 4]
    prompts, _ = parse(lines, start=7)
    assert [p.task_index for p in prompts] == [7, 8, 9]


def test_explicit_task_index_is_kept():
    prompts, _ = parse([json.dumps({"prompt": "a", "_ng_task_index": 42})])
    assert prompts[0].task_index == 42 and prompts[0].row["_ng_task_index"] == 42


def test_missing_input_file_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        input_digest(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="does not exist"):
        list(iter_lines(str(tmp_path / "nope.jsonl")))


def test_digest_depends_on_content_only(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "x"}\n')
    b.write_text('{"prompt": "x"}\n')
    assert input_digest(str(a)) == input_digest(str(b))
    b.write_text('{"prompt": "y"}\n')
    assert input_digest(str(a)) != input_digest(str(b))

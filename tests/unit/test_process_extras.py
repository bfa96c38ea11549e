"""The `extra` column is exact: valid JSON whose values equal (type included) what orjson reads from the line."""

from __future__ import annotations

import io
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from rollouts.process import extras, load_rollouts
from rollouts.process.extras import RULE_KEYS, SAMPLE_HEAD, SAMPLE_SPREAD, extras_column, loads_extra

TRICKY = [
    'q"x',
    "a\\b",
    "\\boxed{1}",
    "é\U0001f600",
    "\u0000\x1b",
    "\n\t",
    '{"b":1}',
    "{}",
    "[1]",
    "",
    "null",
    "3",
    "true",
    "-1.5",
    "\u2028",
    "/",
]


def exact(value: Any) -> Any:
    """A value with its JSON type spelled out, so that 3, 3.0, True and "3" all differ."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact(v) for v in value]
    return type(value).__name__, value


def expected(line: str) -> dict[str, Any]:
    row = orjson.loads(line)
    return {k: v for k, v in row.items() if k not in RULE_KEYS and v is not None and not k.startswith(("_ng_", "ng_"))}


def column_of(lines: list[str]) -> list[str | None]:
    data = ("\n".join(lines) + "\n").encode()
    df = pl.DataFrame(
        {"raw": lines, "schema_version": [None] * len(lines)}, schema={"raw": pl.String, "schema_version": pl.Int64}
    )
    return extras_column(df, data).to_list()


def assert_exact(lines: list[str]) -> None:
    for i, (line, text) in enumerate(zip(lines, column_of(lines), strict=True)):
        assert text is None or isinstance(orjson.loads(text), dict), f"row {i}: {text!r} is not a JSON object"
        assert exact(loads_extra(text)) == exact(expected(line)), f"row {i}: {line}"


def test_a_key_that_is_a_string_on_some_rows_and_a_number_on_others() -> None:
    assert_exact([json.dumps({"score": v, "n": i}) for i, v in enumerate(["high", 3, "3", 2.5, True, "true", None])])


def test_strings_that_need_escapes_or_look_like_json() -> None:
    assert_exact([json.dumps({"mixed": s if i % 2 else i, "text": s}) for i, s in enumerate(TRICKY)])
    assert_exact(
        [json.dumps({"mixed": s, "obj": {"s": s}}, ensure_ascii=False) for s in TRICKY] + ['{"mixed": 1, "obj": []}']
    )


def test_floats_are_exact() -> None:
    rng = random.Random(7)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(3000)]
    floats = [f for f in floats if math.isfinite(f)] + [0.1, 1e-7, 1e23, -0.0, 5e-324, 0.30000000000000004]
    lines = [
        orjson.dumps({"score": f, "judge": {"p": f, "xs": [f, 1]}, "count": i}).decode() for i, f in enumerate(floats)
    ]
    lines += [
        '{"score": 3, "judge": {"p": 3, "xs": [2.0]}, "count": 1}',
        '{"score": 1.00000000000000011102230246251565404}',
    ]
    assert_exact(lines)


def test_a_value_of_another_type_beyond_the_sample() -> None:
    n = SAMPLE_HEAD + 2 * SAMPLE_SPREAD + 20  # past the head every other row is sampled: the odd ones are never seen
    beyond = [i for i in range(SAMPLE_HEAD, n) if i % 2 == 1][:4]
    values: dict[str, list[Any]] = {
        "agent_ref": [{"name": "math"}] * n,  # an object, and beyond the sample a string, a number, a list
        "answer": ["4"] * n,  # a string, and beyond it a number, an object, a bool
        "steps": [3] * n,  # an integer, and beyond it a string (the typed read fails) and a float
        "flag": [True] * n,
    }
    odd: dict[str, list[Any]] = {
        "agent_ref": ['{"name":"math"}', 7, [1], "null"],
        "answer": [4, {"a": "4"}, True, 4.5],
        "steps": ["3", 3.5, False, {}],
        "flag": ["true", 1, None, [True]],
    }
    for key, others in odd.items():
        for i, other in zip(beyond, others, strict=False):
            values[key][i] = other
    rows = [{k: v[i] for k, v in values.items()} for i in range(n)]
    seen = extras._sample(pl.Series([json.dumps(r) for r in rows]))
    assert not {json.dumps(rows[i]) for i in beyond} & set(seen)  # really beyond the sample
    assert_exact([json.dumps(r) for r in rows])
    assert_exact([json.dumps(r) for r in rows[: SAMPLE_HEAD + 1]] + [json.dumps(rows[i]) for i in beyond])


def test_a_key_written_with_escapes_is_still_checked() -> None:
    lines = ['{"answer": "4", "n": 1}'] * 5 + ['{"\\u0061nswer": 4, "n": 2}', '{"answer": [4], "n": 3}']
    assert_exact(lines)


def test_extra_through_load_rollouts(tmp_path: Path) -> None:
    def row(task: int, **extra: Any) -> str:
        return json.dumps(
            {
                "responses_create_params": {"input": f"What is {task} + 1?"},
                "_ng_task_index": task,
                "_ng_rollout_index": 0,
                "response": {
                    "output": [
                        {
                            "type": "message",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": "\\boxed{2}"}],
                        }
                    ],
                    "usage": {"output_tokens": 3},
                },
                "reward": 1.0,
                **extra,
            }
        )

    lines = [
        row(0, score="high", agent_ref={"name": "math"}),
        row(1, score=3, agent_ref={"name": "math"}),
        row(2, score='q"x', judge=0.1 + 0.2),
        row(3, score="3", judge=1e-30),
    ]
    path = tmp_path / "gym.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    loaded = load_rollouts([str(path)])
    assert loaded.frame_data is not None
    got = [exact(loads_extra(e)) for e in loaded.frame_data["extra"]]
    assert got == [exact(expected(line)) for line in lines]


@pytest.mark.parametrize("rows", [1, 3, 700])
def test_the_usual_collection_rows_take_no_python_per_row(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    line = (
        '{"agent_ref":{"name":"math"},"expected_answer":"%d","tool_stats":{"calculator":{"calls":1,"errors":0,'
        '"total_ms":12.345,"max_ms":%d.5}},"end_reason":"done","response":{"output":[]},"reward":1.0}'
    )
    lines = [line % (i, i) for i in range(rows)]
    calls: list[int] = []
    original = extras._exact_rows

    def counted(df: pl.DataFrame, keys: Any, suspect: pl.Series, extra: pl.Series | None = None) -> pl.Series:
        calls.append(int(suspect.sum()) if extra is not None else df.height)
        return original(df, keys, suspect, extra)

    monkeypatch.setattr(extras, "_exact_rows", counted)
    df = pl.read_ndjson(io.BytesIO("\n".join(lines).encode()), schema={"schema_version": pl.Int64}).with_columns(
        raw=pl.Series(lines)
    )
    out = extras_column(df, ("\n".join(lines) + "\n").encode()).to_list()
    assert [exact(loads_extra(t)) for t in out] == [exact(expected(x)) for x in lines]
    assert calls == [0]  # no row read in Python


def gym_row(task: int, **extra: Any) -> str:
    return json.dumps(
        {
            "responses_create_params": {"input": f"What is {task} + 1?"},
            "_ng_task_index": task,
            "_ng_rollout_index": 0,
            "response": {"output": [{"type": "message", "role": "assistant", "content": []}]},
            "reward": 1.0,
            **extra,
        }
    )


def test_scalar_extras_ride_along_with_the_typed_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual chunk is read by read_ndjson once: its scalar extra keys come with the typed columns. A key of
    another type beyond the sample makes that read fail: the chunk is read again without them, nothing lost."""
    reads: list[list[str]] = []
    original = pl.read_ndjson

    def counted(source: Any, *, schema: Any = None, **kwargs: Any) -> pl.DataFrame:
        reads.append(list(schema or {}))
        return original(source, schema=schema, **kwargs)

    monkeypatch.setattr(pl, "read_ndjson", counted)
    path = tmp_path / "gym.jsonl"
    path.write_text("".join(gym_row(i, answer=str(i), steps=i, agent_ref={"name": "m"}) + "\n" for i in range(5)))
    loaded = load_rollouts([str(path)])
    assert len(reads) == 1 and {"answer", "steps", "reward"} <= set(reads[0])
    assert loaded.frame_data is not None
    assert [loads_extra(e) for e in loaded.frame_data["extra"]] == [
        {"agent_ref": {"name": "m"}, "answer": str(i), "steps": i} for i in range(5)
    ]

    n = SAMPLE_HEAD + 2 * SAMPLE_SPREAD + 20
    odd = SAMPLE_HEAD + 1  # past the head every other row is sampled: this one is not
    lines = [gym_row(i, steps=str(i) if i == odd else i) for i in range(n)]
    path.write_text("".join(line + "\n" for line in lines))
    reads.clear()
    loaded = load_rollouts([str(path)])
    assert loaded.frame_data is not None and loaded.rows == n and loaded.bad_rows.count == 0
    assert [exact(loads_extra(e)) for e in loaded.frame_data["extra"]] == [exact(expected(x)) for x in lines]
    assert "steps" in reads[0] and "steps" not in reads[1]  # the typed read again, alone

"""The typed decoder (rollouts/quality/typed.py) builds the same check frame as polars' decoder, and refuses the
blocks polars would read differently (those go the polars way); frames are built a step ahead in a thread, and
worker processes check large inputs to the same verdicts."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import rollouts.quality.loader as loader
from rollouts.quality import QualityConfig, check_path, register, unregister
from rollouts.quality.engine import prefetched
from rollouts.quality.loader import ToolLists, frame_of_lines
from rollouts.quality.registry import result
from rollouts.quality.typed import decode_block

from .quality_rows import CALCULATOR, call, message, output, reasoning, row

FIXTURES = Path(__file__).parents[1] / "fixtures"
CHAT_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def _shapes() -> list[dict[str, Any]]:
    """Rows of every shape the checks read: ours, NeMo Gym's, odd but well-typed ones."""
    refusal = {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}
    parts = {
        "type": "message",
        "content": [None, {"type": "output_text", "text": None}, {"type": "output_text", "text": "A"}],
    }
    thought = {"type": "reasoning", "summary": [{"text": "s1"}, None, {"text": "s2"}], "content": [{"text": "c"}]}
    rows = [
        row([reasoning("hmm"), message("It is 4.", gen=5)], task=0),
        row([message("a", gen=3), call("calculate", '{"expression": "1+1"}'), output("c1", "2"), message("2", gen=0)]),
        row([call("calculate", "{bad"), output("c1", "Error"), message("4")], task=1, tools=[CALCULATOR]),
        row([call("lookup", "{}")], task=2, tools=[CHAT_TOOL]),
        row([call("lookup", "{}")], task=3, tools=[])
        | {"response": {"output": [call("x", "{}")], "tools": [CHAT_TOOL]}},
        row([call("lookup", "{}")], task=4, tools="[]"),  # type: ignore[arg-type]
        row([call("lookup", "{}")], task=5) | {"responses_create_params": {"tools": None, "temperature": 2}},
        row([refusal, parts, thought, None, {"type": "mystery"}], task=6),  # type: ignore[list-item]
        row([message("x")], task=7, finish="length", output_tokens=None),
        row([], task=8) | {"status": "failed", "response": None},
        row([message("y")], task=9) | {"_ng_failure_class": "Timeout", "sampling": None, "rollout_id": None},
        {"rollout_id": "bare"},
        row([{"type": "message", "content": "a bare string"}, {"type": "reasoning", "summary": "s"}], task=12),
    ]
    for path in (FIXTURES / "process" / "gym.jsonl", FIXTURES / "gym_out" / "rollouts.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _lines(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"file": ["f.jsonl"] * len(texts), "line": list(range(1, len(texts) + 1)), "raw": texts},
        schema={"file": pl.String(), "line": pl.Int64(), "raw": pl.String()},
    )


def _both(texts: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[pl.DataFrame, pl.DataFrame]:
    typed = frame_of_lines(_lines(texts), "src")
    with monkeypatch.context() as patch:
        patch.setattr(loader, "decode_block", lambda *args: None)
        by_polars = frame_of_lines(_lines(texts), "src")
    return typed, by_polars


def test_typed_decoder_builds_the_frame_polars_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [json.dumps(r) for r in _shapes()]
    data = ("\n".join(texts) + "\n").encode()
    assert decode_block(data, ["f.jsonl"] * len(texts), list(range(1, len(texts) + 1)), ToolLists().of_text)
    typed, by_polars = _both(texts, monkeypatch)
    assert typed.height == len(texts)
    assert_frame_equal(typed, by_polars)
    got = typed.to_dicts()
    assert got[0]["gen_tokens"] == 5 and got[1]["gen_tokens"] == 3 and got[2]["gen_tokens"] is None
    assert json.loads(got[2]["tools"])[0]["name"] == "calculate"
    assert json.loads(got[3]["tools"])[0]["name"] == "lookup"  # Chat Completions shape
    assert json.loads(got[4]["tools"])[0]["name"] == "lookup"  # the response's list when the request's is empty
    assert got[5]["tools"] is None
    assert got[7]["final_text"] == "No.A"  # a refusal part, null parts left out


@pytest.mark.parametrize(
    "text",
    [
        '{"rollout_id": 7}',  # a number where text is expected: polars reads "7"
        '{"_ng_task_index": 1.5}',  # polars truncates
        '{"_ng_task_index": 99999999999999999999}',  # beyond 64 bits: polars reads null
        '{"_ng_task_index": true}',  # polars reads 1
        '{"response": {"output": [{"type": "message", "content": {"text": "x"}}]}}',  # an object where a list is
        "[1, 2]",
        "not json",
    ],
)
def test_rows_polars_reads_differently_are_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [json.dumps(row([message("ok")])), text]
    data = ("\n".join(texts) + "\n").encode()
    assert decode_block(data, ["f"] * 2, [1, 2], ToolLists().of_text) is None
    bad: list[tuple[str, int, str]] = []
    frame = frame_of_lines(_lines(texts), "src", on_bad=bad.extend)
    assert frame.height + len(bad) == 2


def test_blank_lines_and_bytes_that_are_not_utf8_are_refused() -> None:
    good = json.dumps(row([message("ok")])).encode()
    tools = ToolLists().of_text
    assert decode_block(good + b"\n\n" + good + b"\n", ["f"] * 3, [1, 2, 3], tools) is None
    assert decode_block(good[:-1] + b', "x": "\xff"}\n', ["f"], [1], tools) is None
    assert decode_block(good + b"\n", ["f"], [1], tools) is not None


def test_prefetched_frames_keep_their_order_errors_and_early_stops() -> None:
    frames = [pl.DataFrame({"n": [i]}) for i in range(5)]
    assert [f["n"][0] for f in prefetched(iter(frames))] == [0, 1, 2, 3, 4]

    def failing() -> Iterator[pl.DataFrame]:
        yield frames[0]
        raise ValueError("bad block")

    got = prefetched(failing())
    assert next(got)["n"][0] == 0
    with pytest.raises(ValueError, match="bad block"):
        next(got)

    early = prefetched(iter(frames))
    assert next(early)["n"][0] == 0
    early.close()  # the reader thread stops instead of waiting to hand over the next frame
    assert not any(t.name == "rollouts-quality-reader" for t in threading.enumerate())


def _spread_rows(path: Path) -> None:
    """A JSONL of 40 rollouts in groups of two with every kind of verdict, a failed row and two bad lines; the
    last line without its newline."""
    lines = []
    for task in range(20):
        for rollout in range(2):
            text = "The sum again. " * 60 if task % 5 == 0 else f"It is {task}."
            lines.append(json.dumps(row([message(text, gen=3)], task=task, rollout=rollout, output_tokens=3)))
    lines[7] = json.dumps(row([], task=3, rollout=1) | {"status": "failed", "response": None})
    lines[11], lines[30] = "not json", "[1]"
    data = "\n".join(lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("name", ["rollouts.jsonl", "rollouts.jsonl.gz"])  # workers read the file, or get bytes
def test_worker_processes_give_the_verdicts_one_process_gives(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    _spread_rows(path)
    one = check_path(str(path), chunk_bytes=2_000)
    several = check_path(str(path), chunk_bytes=2_000, workers=2)
    assert several.checked == one.checked == 37  # 40 lines, one failed, two bad
    assert_frame_equal(several.verdicts(), one.verdicts())
    assert (several.failed, several.lines, several.bad_rows) == (one.failed, one.lines, one.bad_rows) == (1, 40, 2)
    assert several.bad_examples == one.bad_examples
    assert [b[1] for b in several.bad_examples] == [12, 31]
    assert several.summary() == one.summary()


def test_a_check_registered_at_run_time_runs_without_worker_processes(tmp_path: Path) -> None:
    path = tmp_path / "rollouts.jsonl"
    _spread_rows(path)

    @register("says_seven", needs=("final_text",))
    def says_seven(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
        """The answer is seven."""
        return result(frame, fired=pl.col("final_text") == "It is 7.", evidence=pl.lit("7"))

    try:
        outcome = check_path(str(path), chunk_bytes=2_000, workers=2)
        assert outcome.fired("says_seven") == 2
    finally:
        unregister("says_seven")


@pytest.mark.parametrize("chunk_bytes", [7, 64, 100, 1 << 20])
@pytest.mark.parametrize(
    "data",
    [
        b"".join(b'{"a":%d}\n' % i for i in range(1000)),
        b"".join(b'{"a":%d}\n' % i for i in range(999)) + b'{"a":1}',  # the last line without its newline
        b'{"a":1}\n  ',  # trailing blanks: no block
        b"",
        b'{"a":"' + b"x" * 300 + b'"}\n' + b'{"b":1}\n' * 50,  # a line longer than a chunk
        b"\n\n{}\n\n",
        b"".join(b"x" * (i * 37 % 81) + b"\n" for i in range(3000)) + b"tail",
    ],
    ids=["lines", "no-last-newline", "trailing-blanks", "empty", "long-line", "blank-lines", "ragged"],
)
def test_line_blocks_cut_a_file_where_the_reader_does_without_keeping_bytes(tmp_path, data, chunk_bytes) -> None:
    """The places the worker processes read back are the reader's own blocks: same first lines, offsets, lengths."""
    import fsspec

    from rollouts.process.readers import iter_jsonl_chunks
    from rollouts.quality.loader import line_blocks, with_bytes

    path = tmp_path / "rollouts.jsonl"
    path.write_bytes(data)
    expected, offset = [], 0
    for first_line, chunk in iter_jsonl_chunks(fsspec.filesystem("file"), str(path), chunk_bytes):
        expected.append((first_line, offset, chunk))
        offset += len(chunk)
    places = list(line_blocks(str(path), chunk_bytes))
    assert [(line, at, len(chunk)) for line, at, chunk in expected] == places
    read_back = [with_bytes(("f", line, b"", (str(path), at, length)))[2] for line, at, length in places]
    assert read_back == [chunk for _, _, chunk in expected]

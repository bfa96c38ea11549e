"""Format stage: turn a selection into training files (RL Parquet/JSONL, SFT and DPO JSONL formats) on any fsspec URL.

RL rows are built and written by polars in streaming mode (no Python per row). SFT and DPO rows go through the
message conversion in formats.py, in batches, only for the rows that were selected.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

from ..errors import InputError, StorageError
from .card import DataCard, OutputFile
from .config import ProcessConfig
from ..records import dumps
from .formats import Conversation, ConversionError, chat_tools, completion_text, loads, prompt_messages, prompt_text
from .readers import LoadedRollouts, url_to_fs

BATCH_ROWS = 20_000
CONVERSION_ERRORS = (ConversionError, ValueError, TypeError, KeyError, AttributeError)
RL_KEYS = ["group_id", "rollout_id", "task_index", "rollout_index"]
RL_STATS = ["reward", "advantage", "group_mean", "group_std", "group_size", "finish_reason", "output_tokens", "num_turns"]
TOKEN_COLUMNS = ["prompt_token_ids", "generation_token_ids", "generation_log_probs"]


class Target:
    """One output file: polars writes to a local path; remote files are staged in a temp dir and uploaded."""

    def __init__(self, out_dir: str, name: str, storage_options: dict[str, Any] | None) -> None:
        self.url = f"{out_dir.rstrip('/')}/{name}"
        self.fs, self.path = url_to_fs(self.url, storage_options)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def sink(self, write: Callable[[str], None]) -> None:
        try:
            if self.local:
                write(self.path)
                return
            with tempfile.TemporaryDirectory() as tmp:
                staged = os.path.join(tmp, os.path.basename(self.path))
                write(staged)
                self.fs.put_file(staged, self.path)
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot write ({exc})") from exc

    def open_text(self) -> Any:
        try:
            return self.fs.open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot write ({exc})") from exc


def write_rl(selected: pl.DataFrame, loaded: LoadedRollouts, config: ProcessConfig, out_dir: str, so: dict[str, Any] | None) -> list[OutputFile]:
    tokens = TOKEN_COLUMNS if loaded.has_token_ids else []
    heavy = loaded.scan(
        ["row", "rollout_id", "task_index", "rollout_index", "prompt", "tools", "output", "finish_reason", "output_tokens", "num_turns", *tokens],
        so,
    )
    rows = heavy.join(selected.lazy(), on="row", how="inner", maintain_order="left")
    files = []
    for fmt in config.output_formats:
        target = Target(out_dir, f"rollouts.{fmt}", so)
        if fmt == "parquet":
            target.sink(rows.select(*RL_KEYS, "prompt", "tools", "output", *RL_STATS, *tokens).sink_parquet)
        else:
            head = pl.struct(*RL_KEYS).struct.json_encode().str.strip_suffix("}")
            tail = pl.struct(*RL_STATS, *tokens).struct.json_encode().str.strip_prefix("{")
            line = pl.concat_str(
                head,
                pl.lit(',"prompt":'),
                pl.col("prompt"),
                pl.lit(',"tools":'),
                pl.col("tools").fill_null("null"),
                pl.lit(',"output":'),
                pl.col("output"),
                pl.lit(","),
                tail,
            )
            # one pre-built JSON text per row; CSV with no quoting writes it verbatim, streaming
            target.sink(functools.partial(rows.select(line=line).sink_csv, include_header=False, quote_style="never"))
        files.append(OutputFile(format=fmt, path=target.url, rows=selected.height))
    return files


Record = dict[str, Any]


def _heavy(loaded: LoadedRollouts, rows: pl.Series, so: dict[str, Any] | None) -> pl.DataFrame:
    cols = ["row", "file", "line", "prompt", "tools", "output"]
    return loaded.scan(cols, so).filter(pl.col("row").is_in(rows.implode())).collect(engine="streaming")


def _write_jsonl(
    targets: dict[str, Target],
    records: Iterator[dict[str, Record | None]],
) -> dict[str, int]:
    """Stream records to one JSONL file per format; a None record (format cannot represent the row) is skipped."""
    counts = dict.fromkeys(targets, 0)
    handles = {fmt: t.open_text() for fmt, t in targets.items()}
    buffers: dict[str, list[str]] = {fmt: [] for fmt in targets}
    try:
        for n, by_format in enumerate(records, 1):
            for fmt, record in by_format.items():
                if record is not None:
                    buffers[fmt].append(dumps(record))
            if n % BATCH_ROWS == 0:
                _flush(handles, buffers, counts)
        _flush(handles, buffers, counts)
    finally:
        for h in handles.values():
            h.close()
    return counts


def _flush(handles: dict[str, Any], buffers: dict[str, list[str]], counts: dict[str, int]) -> None:
    for fmt, lines in buffers.items():
        if lines:
            handles[fmt].write("\n".join(lines) + "\n")
            counts[fmt] += len(lines)
            lines.clear()


def _with_tools(record: Record, tools: list[Any] | None) -> Record:
    if tools:
        record["tools"] = tools
    return record


def _bad(card: DataCard, config: ProcessConfig, file: str, line: int, exc: Exception) -> None:
    detail = f"cannot convert to chat messages: {exc}"
    if not config.skip_bad_rows:
        raise InputError(f"{file}:{line}: {detail} (--skip-bad-rows skips and counts such rows)", file=file, line=line)
    card.bad_rows.add(file, line, "unconvertible", detail)


def write_sft(selected: pl.DataFrame, loaded: LoadedRollouts, config: ProcessConfig, out_dir: str, so: dict[str, Any] | None, card: DataCard) -> list[OutputFile]:
    data = _heavy(loaded, selected["row"], so).join(selected.select("row"), on="row").sort("row")
    targets = {fmt: Target(out_dir, f"{fmt}.jsonl", so) for fmt in config.output_formats}

    def records() -> Iterator[dict[str, Record | None]]:
        for file, line, prompt, tools, output in data.select("file", "line", "prompt", "tools", "output").iter_rows():
            try:
                conv = Conversation(prompt_messages(prompt), output, chat_tools(loads(tools)))
                yield {fmt: _sft_record(fmt, conv) for fmt in targets}
            except CONVERSION_ERRORS as exc:
                _bad(card, config, file, line, exc)

    counts = _write_jsonl(targets, records())
    return [OutputFile(format=fmt, path=t.url, rows=counts[fmt]) for fmt, t in targets.items()]


def write_dpo(pairs: pl.DataFrame, loaded: LoadedRollouts, config: ProcessConfig, out_dir: str, so: dict[str, Any] | None, card: DataCard) -> list[OutputFile]:
    rows = pl.concat([pairs["chosen_row"], pairs["rejected_row"]]).unique()
    heavy = _heavy(loaded, rows, so)
    chosen = heavy.select("row", "file", "line", "prompt", "tools", c_output="output")
    rejected = heavy.select("row", r_file="file", r_line="line", r_output="output")
    # keep the selection's order: prompts in input order, each prompt's pairs by margin
    data = pairs.join(chosen, left_on="chosen_row", right_on="row", maintain_order="left")
    data = data.join(rejected, left_on="rejected_row", right_on="row", maintain_order="left")
    targets = {fmt: Target(out_dir, f"{fmt}.jsonl", so) for fmt in config.output_formats}
    skipped = dict.fromkeys(targets, 0)

    def records() -> Iterator[dict[str, Record | None]]:
        cols = ["file", "line", "prompt", "tools", "c_output", "r_file", "r_line", "r_output"]
        for file, line, prompt, tools, c_out, r_file, r_line, r_out in data.select(cols).iter_rows():
            try:
                messages, chat = prompt_messages(prompt), chat_tools(loads(tools))
                chosen = Conversation(messages, c_out, chat)
            except CONVERSION_ERRORS as exc:
                _bad(card, config, file, line, exc)
                continue
            try:
                rejected = Conversation(messages, r_out, chat)
                out = {fmt: _dpo_record(fmt, chosen, rejected) for fmt in targets}
            except CONVERSION_ERRORS as exc:
                _bad(card, config, r_file, r_line, exc)
                continue
            for fmt, record in out.items():
                if record is None:
                    skipped[fmt] += 1
            yield out

    counts = _write_jsonl(targets, records())
    notes = {
        "openai": "pairs skipped: OpenAI preference data needs one assistant message per side, and distinct sides",
        "trl-standard": "pairs skipped: the final texts of both sides are equal or empty (tool calls have no text form)",
    }
    return [
        OutputFile(format=fmt, path=t.url, rows=counts[fmt], note=f"{skipped[fmt]} {notes.get(fmt, 'pairs skipped: identical after conversion')}" if skipped[fmt] else None)
        for fmt, t in targets.items()
    ]


def _sft_record(fmt: str, conv: Conversation) -> Record:
    if fmt == "trl-prompt-completion":
        return _with_tools({"prompt": conv.prompt("trl"), "completion": conv.completion("trl")}, conv.tools())
    flavor = "openai" if fmt == "openai" else "trl"
    return _with_tools({"messages": conv.prompt(flavor) + conv.completion(flavor)}, conv.tools())


def _dpo_record(fmt: str, chosen: Conversation, rejected: Conversation) -> Record | None:
    """One pair in one format, or None when the format would make chosen == rejected or cannot hold the pair."""
    if fmt == "trl-standard":
        c, r = completion_text(chosen.completion("trl")), completion_text(rejected.completion("trl"))
        if not c or not r or c == r:
            return None
        return {"prompt": prompt_text(chosen.prompt("trl")), "chosen": c, "rejected": r}
    flavor = "openai" if fmt == "openai" else "trl"
    c_msgs, r_msgs = chosen.completion(flavor), rejected.completion(flavor)
    if c_msgs == r_msgs:
        return None
    tools = chosen.tools()
    if fmt == "openai":
        if len(c_msgs) != 1 or len(r_msgs) != 1 or c_msgs[0]["role"] != "assistant" or r_msgs[0]["role"] != "assistant":
            return None
        return {"input": _with_tools({"messages": chosen.prompt("openai")}, tools), "preferred_output": c_msgs, "non_preferred_output": r_msgs}
    if fmt == "nemo-rl":
        return _with_tools(
            {"context": chosen.prompt("trl"), "completions": [{"rank": 0, "completion": c_msgs}, {"rank": 1, "completion": r_msgs}]},
            tools,
        )
    return _with_tools({"prompt": chosen.prompt("trl"), "chosen": c_msgs, "rejected": r_msgs}, tools)

"""Format stage: turn a selection into training files (RL Parquet/JSONL, SFT and DPO JSONL formats) on any fsspec URL.

RL rows are built and written by polars in streaming mode (no Python per row). SFT and DPO rows go through the
message conversion in formats.py, in batches, only for the rows that were selected.
"""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import polars as pl

from ..client.chat import Message
from ..errors import InputError, StorageError
from ..records import dumps
from ..storage import filesystem
from . import verl
from .card import DataCard, Drop, OutputFile
from .config import ProcessConfig
from .formats import (
    Conversation,
    ConversionError,
    Flavor,
    chat_tools,
    completion_text,
    has_tool_exchange,
    loads,
    prompt_messages,
    prompt_text,
)
from .readers import LoadedRollouts

BATCH_ROWS = 20_000
CONVERSION_ERRORS = (ConversionError, ValueError, TypeError, KeyError, AttributeError)
RL_KEYS = ["group_id", "rollout_id", "task_index", "rollout_index"]
RL_STATS = [
    "reward",
    "advantage",
    "group_mean",
    "group_std",
    "group_size",
    "finish_reason",
    "output_tokens",
    "num_turns",
]
TOKEN_COLUMNS = ["prompt_token_ids", "generation_token_ids", "generation_log_probs"]
# The conversational TRL files with tools: what Hugging Face `datasets` makes of them unless told otherwise.
TRL_CHAT = ("trl", "trl-prompt-completion")
TRL_LOAD = (
    "load with every column typed `datasets.Json()` (docs/training-files.md, Loading a TRL file): one Arrow type per "
    "column pads other rows' tool-call argument keys with nulls, reorders them and turns 1 into 1.0, under the loss"
)


def _notes(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _trl_load(fmt: str, has_tools: bool) -> str | None:
    """TRL_LOAD for a conversational TRL file whose rows carry tools."""
    return TRL_LOAD if fmt in TRL_CHAT and has_tools else None


class Target:
    """One output file: polars writes to a local path; remote files are staged in a temp dir and uploaded."""

    def __init__(self, out_dir: str, name: str, storage_options: dict[str, Any] | None) -> None:
        self.url = f"{out_dir.rstrip('/')}/{name}"
        self.fs, self.path = filesystem(self.url, storage_options)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def sink(self, write: Callable[[str], None]) -> None:
        try:
            if self.local:  # written aside, then renamed: a kill mid-write never leaves a torn or empty file
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                write(self.staging)
                self.publish()
                return
            with tempfile.TemporaryDirectory() as tmp:
                staged = os.path.join(tmp, os.path.basename(self.path))
                write(staged)
                self.fs.put_file(staged, self.path)
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot write ({exc})") from exc

    @functools.cached_property
    def staging(self) -> str:
        """Where a local file is written before `publish()` renames it into place (an object store's PUT is whole)."""
        return f"{self.path}.tmp-{uuid.uuid4().hex[:8]}" if self.local else self.path

    def open_text(self) -> Any:
        try:
            if self.local:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            return self.fs.open(self.staging, "w", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot write ({exc})") from exc

    def write_text(self, text: str) -> None:
        with self.open_text() as fh:
            fh.write(text)
        self.publish()

    def publish(self) -> None:
        if self.local and os.path.exists(self.staging):
            with open(self.staging, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.staging, self.path)

    def discard(self) -> None:
        if self.local and os.path.exists(self.staging):
            os.remove(self.staging)


class Card(Protocol):
    def model_dump_json(self, *, indent: int | None = None) -> str: ...

    def to_markdown(self) -> str: ...


def write_card(card: Card, out_dir: str, stem: str, storage_options: dict[str, Any] | None) -> tuple[str, str]:
    """A card beside the files it describes: `<stem>.json` and `<stem>.md` in `out_dir`; their URLs."""
    as_json, as_markdown = (
        Target(out_dir, f"{stem}.json", storage_options),
        Target(out_dir, f"{stem}.md", storage_options),
    )
    as_json.write_text(card.model_dump_json(indent=2) + "\n")
    as_markdown.write_text(card.to_markdown())
    return as_json.url, as_markdown.url


def write_rl(
    selected: pl.DataFrame, loaded: LoadedRollouts, config: ProcessConfig, out_dir: str, so: dict[str, Any] | None
) -> list[OutputFile]:
    tokens = TOKEN_COLUMNS if loaded.has_token_ids else []
    heavy = [
        "row",
        "group_id",
        "rollout_id",
        "task_index",
        "rollout_index",
        "prompt",
        "tools",
        "output",
        "extra",
        "finish_reason",
        "output_tokens",
        "num_turns",
        *tokens,
    ]
    # group_id comes with the frame's columns: the selection's join table holds numbers only
    rows = loaded.joined(selected.drop("group_id"), heavy, so)
    files = []
    for fmt in config.output_formats:
        if fmt == "tokens":  # written by rollouts.tokens (training.api)
            continue
        if fmt == "verl":
            files.append(write_verl_rl(rows, loaded, out_dir, so))
            continue
        target = Target(out_dir, f"rollouts.{fmt}", so)
        if fmt == "parquet":
            target.sink(rows.select(*RL_KEYS, "prompt", "tools", "output", "extra", *RL_STATS, *tokens).sink_parquet)
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
                pl.lit(',"extra":'),
                pl.col("extra").fill_null("{}"),
                pl.lit(","),
                tail,
            )
            # one pre-built JSON text per row; CSV with no quoting writes it verbatim, streaming
            target.sink(functools.partial(rows.select(line=line).sink_csv, include_header=False, quote_style="never"))
        files.append(OutputFile(format=fmt, path=target.url, rows=selected.height))
    return files


def write_verl_rl(rows: pl.LazyFrame, loaded: LoadedRollouts, out_dir: str, so: dict[str, Any] | None) -> OutputFile:
    """One verl RLHFDataset row per kept prompt (per distinct prompt of a task), in input order. Its metadata is the
    prompt's own: see `verl.prompt_fields`."""
    prompts = rows.select("group_id", "task_index", "prompt", "tools").collect()
    prompts = prompts.unique(["group_id", "prompt", "tools"], keep="first", maintain_order=True)
    groups = prompts["group_id"].unique().implode()
    every = loaded.scan(["group_id", "prompt", "tools", "extra"], so).filter(pl.col("group_id").is_in(groups))
    extras: dict[tuple[str, str, str | None], list[str | None]] = {}
    for group_id, prompt, tools, extra in every.collect().iter_rows():
        extras.setdefault((group_id, prompt, tools), []).append(extra)
    out = []
    for group_id, task, prompt, tools in prompts.iter_rows():
        fields = verl.prompt_fields(extras.get((group_id, prompt, tools), []))
        out.append(verl.rl_prompt_row(prompt_messages(prompt), chat_tools(loads(tools)), fields, task, group_id))
    target = Target(out_dir, "verl.parquet", so)
    frame = verl.rl_frame(out) if out else pl.DataFrame()
    target.sink(frame.write_parquet)
    return OutputFile(format="verl", path=target.url, rows=len(out), note="one row per prompt")


Record = dict[str, Any]


HEAVY = ["row", "file", "line", "prompt", "tools", "parallel_tool_calls", "output"]
PAIR_TEXTS = ["file", "line", "prompt", "tools", "parallel_tool_calls", "c_output"]
PAIR_TEXTS += ["r_file", "r_line", "r_prompt", "r_tools", "r_output"]


def _batches(frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """`frame` BATCH_ROWS rows at a time: a writer holds the texts of one batch of selected rows, never of all."""
    for offset in range(0, frame.height, BATCH_ROWS):
        yield frame.slice(offset, BATCH_ROWS)


def _write_jsonl(
    targets: dict[str, Target],
    records: Iterator[dict[str, Record | list[Record] | None]],
) -> dict[str, int]:
    """Stream records to one JSONL file per format; a None record (format cannot represent the row) is skipped, a
    list is several lines."""
    counts = dict.fromkeys(targets, 0)
    handles = {fmt: t.open_text() for fmt, t in targets.items()}
    buffers: dict[str, list[str]] = {fmt: [] for fmt in targets}
    try:
        for n, by_format in enumerate(records, 1):
            for fmt, record in by_format.items():
                if isinstance(record, list):
                    buffers[fmt].extend(map(dumps, record))
                elif record is not None:
                    buffers[fmt].append(dumps(record))
            if n % BATCH_ROWS == 0:
                _flush(handles, buffers, counts)
        _flush(handles, buffers, counts)
    except BaseException:
        for h in handles.values():
            h.close()
        for target in targets.values():
            target.discard()
        raise
    for h in handles.values():
        h.close()
    for target in targets.values():
        target.publish()
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


def _conversation(prompt: str, tools: str | None, output: str, parallel: bool | None) -> Conversation:
    return Conversation(prompt_messages(prompt), output, chat_tools(loads(tools)), parallel)


def write_sft(
    selected: pl.DataFrame,
    loaded: LoadedRollouts,
    config: ProcessConfig,
    out_dir: str,
    so: dict[str, Any] | None,
    card: DataCard,
) -> list[OutputFile]:
    formats = config.output_formats
    targets = {fmt: Target(out_dir, f"{fmt}.jsonl", so) for fmt in formats if fmt != "verl"}
    verl_rows: list[tuple[list[Any], list[Any] | None]] = []
    empty, has_tools = 0, False

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal has_tools
        cols = ["file", "line", "prompt", "tools", "output", "parallel_tool_calls"]
        for batch in _batches(selected.select("row").sort("row")):
            data = loaded.rows_of(batch["row"], HEAVY, so).sort("row")
            has_tools = has_tools or bool(data["tools"].is_not_null().any())
            yield from data.select(cols).iter_rows()

    def records() -> Iterator[dict[str, Record | list[Record] | None]]:
        nonlocal empty
        for file, line, prompt, tools, output, parallel in rows():
            try:
                conv = _conversation(prompt, tools, output, parallel)
            except CONVERSION_ERRORS as exc:
                _bad(card, config, file, line, exc)
                continue
            if not conv.complete():
                empty += 1  # an assistant message with neither text nor tool calls: nothing to train on
                continue
            if "verl" in formats:
                verl_rows.append((conv.prompt("openai") + conv.completion("openai"), conv.tools()))
            yield {fmt: _sft_record(fmt, conv) for fmt in targets}

    counts = _write_jsonl(targets, records())
    if empty:
        card.dropped.append(Drop(rule="empty_final_message", count=empty, why="the final assistant message is empty"))
        card.rows_out -= empty
    files = [
        OutputFile(
            format=fmt,
            path=t.url,
            rows=counts[fmt],
            note=_notes(
                "one row per model turn: prompt = everything before it (tool results included), completion = the "
                "turn, so TRL's completion mask covers only what the model wrote"
                if fmt == "trl-prompt-completion" and counts[fmt] > card.rows_out
                else None,
                _trl_load(fmt, has_tools),
            ),
        )
        for fmt, t in targets.items()
    ]
    if "verl" in formats:
        frame, left_out = verl.sft_frame(verl_rows)
        target = Target(out_dir, "verl.parquet", so)
        target.sink(frame.write_parquet)
        note = (
            f"{left_out} rows left out: their tools or tool-call arguments have other shapes than the rest of the "
            "file, and one Parquet type would pad them with null fields that the chat template prints (write one "
            "tool set per file, or use `trl`: `messages` with `assistant_only_loss=True`, loaded with `Json()` columns)"
            if left_out
            else None
        )
        files.insert(
            list(formats).index("verl"), OutputFile(format="verl", path=target.url, rows=frame.height, note=note)
        )
    return files


DPO_SKIPS = {
    "one_message": "OpenAI preference data holds one assistant message per side and cannot express tool-call pairs "
    "(use dpo `trl`: the shared history in the prompt, the first model turn where the sides differ as chosen and "
    "rejected)",
    "tool_output_differs": "the two sides first differ in a tool result, not in anything the model wrote",
    "final_message_only": "NeMo RL's preference loader trains only the final message of a completion: "
    "multi-message (tool-call) completions are left out (use dpo `trl` for them)",
    "tool_exchange": "TRL's standard format is plain text after one prompt and cannot carry tool calls, tool results "
    "or several turns (use dpo `trl`, TRL's conversational format: the shared history with its tool calls and results "
    "in the prompt, the first model turn where the sides differ as chosen and rejected)",
    "no_text": "the texts of both sides are equal or empty",
    "images": "this format holds text only and the prompt or a completion has images",
    "identical": "identical after conversion",
}


def write_dpo(
    pairs: pl.DataFrame,
    loaded: LoadedRollouts,
    config: ProcessConfig,
    out_dir: str,
    so: dict[str, Any] | None,
    card: DataCard,
) -> list[OutputFile]:
    targets = {fmt: Target(out_dir, f"{fmt}.jsonl", so) for fmt in config.output_formats}
    skipped: dict[str, Counter[str]] = {fmt: Counter() for fmt in targets}
    has_tools = False

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal has_tools
        for batch in _batches(pairs):
            data = _pair_texts(batch, loaded, so)
            has_tools = has_tools or bool(data["tools"].is_not_null().any())
            yield from data.select(PAIR_TEXTS).iter_rows()

    def records() -> Iterator[dict[str, Record | list[Record] | None]]:
        for file, line, prompt, tools, parallel, c_out, r_file, r_line, r_prompt, r_tools, r_out in rows():
            try:
                chosen = _conversation(prompt, tools, c_out, parallel)
            except CONVERSION_ERRORS as exc:
                _bad(card, config, file, line, exc)
                continue
            try:
                # each side keeps its own prompt (equal unless pairing by task index regardless of prompts)
                rejected = _conversation(r_prompt, r_tools, r_out, parallel)
                out: dict[str, Record | list[Record] | None] = {}
                for fmt in targets:
                    record, reason = _dpo_record(fmt, chosen, rejected)
                    out[fmt] = record
                    if reason:
                        skipped[fmt][reason] += 1
            except CONVERSION_ERRORS as exc:
                _bad(card, config, r_file, r_line, exc)
                continue
            yield out

    counts = _write_jsonl(targets, records())
    files = []
    for fmt, t in targets.items():
        note = "; ".join(f"{n} pairs skipped: {DPO_SKIPS[reason]}" for reason, n in skipped[fmt].items()) or None
        note = _notes(note, _trl_load(fmt, has_tools))
        if fmt == "nemo-rl":
            note = "; ".join(filter(None, [note, "NeMo RL's preference loader ignores `tools`"])) if has_tools else note
        files.append(OutputFile(format=fmt, path=t.url, rows=counts[fmt], note=note))
    return files


def _pair_texts(pairs: pl.DataFrame, loaded: LoadedRollouts, so: dict[str, Any] | None) -> pl.DataFrame:
    """`pairs` (in their order: prompts in input order, each prompt's pairs by margin) with both sides' texts."""
    rows = pl.concat([pairs["chosen_row"], pairs["rejected_row"]]).unique()
    heavy = loaded.rows_of(rows, HEAVY, so)
    chosen = heavy.select("row", "file", "line", "prompt", "tools", "parallel_tool_calls", c_output="output")
    rejected = heavy.select("row", r_file="file", r_line="line", r_prompt="prompt", r_tools="tools", r_output="output")
    data = pairs.join(chosen, left_on="chosen_row", right_on="row", maintain_order="left")
    return data.join(rejected, left_on="rejected_row", right_on="row", maintain_order="left")


def model_turns(completion: list[Message]) -> list[tuple[int, int]]:
    """(start, end) of each run of assistant messages in a completion: what the model wrote between tool results."""
    spans, start = [], None
    for i, message in enumerate(completion):
        if message["role"] == "assistant":
            start = i if start is None else start
        elif start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(completion)))
    return spans


def _sft_record(fmt: str, conv: Conversation) -> Record | list[Record]:
    if fmt == "trl-prompt-completion":
        # TRL trains on the whole completion: tool results must sit in the prompt, so a multi-turn rollout becomes one
        # row per model turn, each with the conversation so far as its prompt
        prompt, completion = conv.prompt("trl"), conv.completion("trl")
        return [
            _with_tools({"prompt": prompt + completion[:a], "completion": completion[a:b]}, conv.tools())
            for a, b in model_turns(completion)
        ]
    flavor: Flavor = "openai" if fmt == "openai" else "trl"
    record = _with_tools({"messages": conv.prompt(flavor) + conv.completion(flavor)}, conv.tools())
    if fmt == "openai" and conv.parallel_tool_calls is not None and conv.tools():
        record["parallel_tool_calls"] = conv.parallel_tool_calls
    return record


def _dpo_record(fmt: str, chosen: Conversation, rejected: Conversation) -> tuple[Record | None, str | None]:
    """One pair in one format, or (None, why) when the format cannot hold the pair or would make its sides equal."""
    if fmt in ("trl-standard", "nemo-rl") and (chosen.has_images() or rejected.has_images()):
        return None, "images"
    if fmt == "trl-standard":
        # plain text after one prompt: a side that is not one assistant text, or a prompt holding a tool exchange,
        # would lose what the model saw or did (a final answer trained without the tool call that led to it)
        sides = (chosen.completion("openai"), rejected.completion("openai"))
        if any(len(side) != 1 or has_tool_exchange(side) for side in sides) or has_tool_exchange(
            chosen.prompt("openai")
        ):
            return None, "tool_exchange"
        c, r = completion_text(chosen.completion("trl")), completion_text(rejected.completion("trl"))
        if not c or not r or c == r:
            return None, "no_text"
        return {"prompt": prompt_text(chosen.prompt("trl")), "chosen": c, "rejected": r}, None
    flavor: Flavor = "openai" if fmt == "openai" else "trl"
    c_msgs, r_msgs = chosen.completion(flavor), rejected.completion(flavor)
    if c_msgs == r_msgs:
        return None, "identical"
    tools = chosen.tools()
    if fmt == "openai":
        if len(c_msgs) != 1 or len(r_msgs) != 1 or c_msgs[0]["role"] != "assistant" or r_msgs[0]["role"] != "assistant":
            return None, "one_message"
        head = _with_tools({"messages": chosen.prompt("openai")}, tools)
        if chosen.parallel_tool_calls is not None and tools:
            head["parallel_tool_calls"] = chosen.parallel_tool_calls
        return {"input": head, "preferred_output": c_msgs, "non_preferred_output": r_msgs}, None
    if fmt == "nemo-rl":
        if len(c_msgs) != 1 or len(r_msgs) != 1:
            return None, "final_message_only"
        completions = [{"rank": 0, "completion": c_msgs}, {"rank": 1, "completion": r_msgs}]
        return _with_tools({"context": chosen.prompt("trl"), "completions": completions}, tools), None
    # TRL trains on everything after the prompt: the shared history (tool results included) joins the prompt, and each
    # side is the first model turn where they differ
    n = _shared_messages(c_msgs, r_msgs)
    if n == len(c_msgs) == len(r_msgs):
        return None, "identical"
    turns = [model_turns(msgs[n:]) for msgs in (c_msgs, r_msgs)]
    if not all(t and t[0][0] == 0 for t in turns):
        return None, "tool_output_differs"
    (_, c_end), (_, r_end) = turns[0][0], turns[1][0]
    record = {
        "prompt": chosen.prompt("trl") + c_msgs[:n],
        "chosen": c_msgs[n : n + c_end],
        "rejected": r_msgs[n : n + r_end],
    }
    return _with_tools(record, tools), None


def _key(message: Message) -> Message:
    """A message without its call ids (ids differ between rollouts; templates do not print them)."""
    out = {k: v for k, v in message.items() if k != "tool_call_id"}
    if out.get("tool_calls"):
        out["tool_calls"] = [{k: v for k, v in c.items() if k != "id"} for c in out["tool_calls"]]
    return out


def _shared_messages(a: list[Message], b: list[Message]) -> int:
    n = 0
    while n < min(len(a), len(b)) and _key(a[n]) == _key(b[n]):
        n += 1
    return n

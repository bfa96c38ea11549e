"""The fast decoder of rollout lines: msgspec decodes each line straight into the few fields the checks read.

msgspec (`Decoder(type=Row).decode_lines`) skips every other key without building it (token arrays, tool schemas,
timings: most of a row's bytes) and types the rest; the rows are then laid out as the flat ROWS_SCHEMA and
ITEMS_SCHEMA columns (frame.py) in one pass. Measured on 3.8 KB rows: ~1.0 CPU-s per 100k rollouts to decode, where
cutting token arrays by regex and polars' `str.json_decode` took ~4.3 s, and the tool lists come from the same pass.

It takes only what polars' decoder would read the same way: every field strictly typed (a number where text is
expected, an integer beyond 64 bits...; a bare string where a list of text parts is expected is one part, as
`frame.coerce` reads it), a block that is not UTF-8,
that has blank lines or a line that is not a JSON object is refused as a whole (`None`), and the caller decodes that
block the polars way (frame.decode, frame.decode_python), which coerces or reports such rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import msgspec
import orjson
import polars as pl

from .frame import ITEMS_SCHEMA, ROWS_SCHEMA

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
NO_RAW = msgspec.Raw()


class Part(msgspec.Struct, gc=False):
    text: str | None = None
    refusal: str | None = None


class Item(msgspec.Struct, gc=False):
    type: str | None = None
    role: str | None = None
    name: str | None = None
    arguments: str | None = None
    call_id: str | None = None
    output: str | None = None
    content: list[Part | None] | str | None = None  # a bare string is one part (NeMo Gym rows), as frame.coerce has it
    summary: list[Part | None] | str | None = None
    generation_token_ids: msgspec.Raw = NO_RAW  # counted, never built


class Incomplete(msgspec.Struct, gc=False):
    reason: str | None = None


class Usage(msgspec.Struct, gc=False):
    output_tokens: Int64 | None = None


class Response(msgspec.Struct, gc=False):
    status: str | None = None
    incomplete_details: Incomplete | None = None
    usage: Usage | None = None
    output: list[Item | None] | None = None
    tools: msgspec.Raw = NO_RAW


class AgentRef(msgspec.Struct, gc=False):
    name: str | None = None


class Sampling(msgspec.Struct, gc=False):
    temperature: float | None = None


class Params(msgspec.Struct, gc=False):
    temperature: float | None = None
    tools: msgspec.Raw = NO_RAW


class Row(msgspec.Struct, gc=False):
    rollout_id: str | None = None
    _ng_task_index: Int64 | None = None
    _ng_rollout_index: Int64 | None = None
    agent_ref: AgentRef | None = None
    schema_version: str | int | float | bool | None = None  # only its presence is read
    status: str | None = None
    _ng_failure_class: str | None = None
    finish_reason: str | None = None
    end_reason: str | None = None
    sampling: Sampling | None = None
    responses_create_params: Params | None = None
    response: Response | None = None


_DECODER = msgspec.json.Decoder(Row)
ToolsOf = Callable[[bytes], str | None]  # a tool list's JSON text -> the row's `tools` value (loader.ToolLists)


def decode_block(
    data: bytes, files: Sequence[str | None], lines: Sequence[int], tools_of: ToolsOf
) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """ROWS_SCHEMA and ITEMS_SCHEMA frames of `data` (one rollout per line, each ending in a newline; `files` and
    `lines` say where each one is), or None when the block must be decoded the polars way (see the module doc)."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        rows = _DECODER.decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(rows) != len(lines):  # blank lines: decode_lines skips them
        return None
    return _rows_frame(rows, files, lines, tools_of), _items_frame(rows)


def _gen_count(raw: msgspec.Raw) -> int | None:
    """Ids in a `generation_token_ids` array given as its JSON text (None when it is not an array)."""
    text = bytes(raw)
    if not text.startswith(b"["):
        return None
    return text.count(b",") + 1 if text.strip(b"[] \t\r\n") else 0


def _tools_text(row: Row) -> bytes | None:
    """The JSON of the tool list a row declares, as polars' `json_path_match` gives it (a string's own text):
    `responses_create_params.tools`, else (absent, null or an empty list) `response.tools`."""
    for raw in (
        row.responses_create_params.tools if row.responses_create_params else NO_RAW,
        row.response.tools if row.response else NO_RAW,
    ):
        text = bytes(raw)
        if text.startswith(b'"'):
            value: str = orjson.loads(text)
            text = value.encode()
            if text != b"[]":
                return text
        elif text and text != b"null" and not (text.startswith(b"[") and not text[1:-1].strip()):
            return text
    return None


def _rows_frame(rows: list[Row], files: Sequence[str | None], lines: Sequence[int], tools_of: ToolsOf) -> pl.DataFrame:
    gen: list[int | None] = []
    tools: list[str | None] = []
    for row in rows:
        output = row.response.output if row.response else None
        count: int | None = None
        calls = False
        for item in output or ():
            if item is None:
                continue
            calls = calls or item.type == "function_call"
            if item.generation_token_ids:
                n = _gen_count(item.generation_token_ids)
                if n is not None:
                    count = n if count is None else count + n
        gen.append(count)
        text = _tools_text(row) if calls else None
        tools.append(None if text is None else tools_of(text))
    responses = [row.response for row in rows]
    columns = {
        "_i": range(len(rows)),
        "file": files,
        "line": lines,
        "gen_tokens": gen,
        "rollout_id": [row.rollout_id for row in rows],
        "task_index": [row._ng_task_index for row in rows],
        "rollout_index": [row._ng_rollout_index for row in rows],
        "env": [row.agent_ref.name if row.agent_ref else None for row in rows],
        "temperature": [_temperature(row) for row in rows],
        "ours": [row.schema_version is not None for row in rows],
        "status": [row.status for row in rows],
        "failure": [row._ng_failure_class is not None for row in rows],
        "has_response": [r is not None for r in responses],
        "finish_reason": [row.finish_reason for row in rows],
        "response_status": [r.status if r else None for r in responses],
        "incomplete_reason": [r.incomplete_details.reason if r and r.incomplete_details else None for r in responses],
        "end_reason": [row.end_reason for row in rows],
        "output_tokens": [r.usage.output_tokens if r and r.usage else None for r in responses],
        "tools": tools,
    }
    return pl.DataFrame(columns, schema=ROWS_SCHEMA)


def _temperature(row: Row) -> float | None:
    sent = row.sampling.temperature if row.sampling else None
    if sent is not None:
        return sent
    return row.responses_create_params.temperature if row.responses_create_params else None


def _items_frame(rows: list[Row]) -> pl.DataFrame:
    at: list[int] = []
    fields: list[tuple[str | None, ...]] = []
    for i, row in enumerate(rows):
        output = row.response.output if row.response else None
        for item in output or ():
            if item is None:
                continue
            at.append(i)
            fields.append(
                (
                    item.type,
                    item.role,
                    item.name,
                    item.arguments,
                    item.call_id,
                    item.output,
                    _joined(item.content, "", refusal=True),
                    _joined(item.summary, "\n", refusal=False),
                )
            )
    names = list(ITEMS_SCHEMA)[1:]
    columns: dict[str, Sequence[object]] = {"_i": at}
    columns |= {name: [f[k] for f in fields] for k, name in enumerate(names)}
    return pl.DataFrame(columns, schema=ITEMS_SCHEMA)


def _joined(parts: list[Part | None] | str | None, separator: str, *, refusal: bool) -> str | None:
    """The parts' text (else their refusal when `refusal`) joined, nulls left out: polars' list.join of the same
    parts; a bare string is its own text."""
    if parts is None or isinstance(parts, str):
        return parts
    out = []
    for part in parts:
        if part is None:
            continue
        text = part.text if part.text is not None or not refusal else part.refusal
        if text is not None:
            out.append(text)
    return separator.join(out)

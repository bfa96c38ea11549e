"""The rollout frame: its one explicit polars schema, and the vectorised parser that turns NDJSON bytes into it.

Why it is built this way (measured with polars 2.1 on the 2-core dev machine, 1.45 KB rollout rows):
- `read_ndjson` with an explicit schema parses the *typed* fields fast (~3 µs/row), but its String capture of a nested
  object or array loses escapes (`"\\\\boxed"` comes back as `\\boxed`, `\\t` as a raw tab), which corrupts the JSON of
  math rollouts. So nested free-form parts are never read that way.
- `str.json_path_match` re-serialises a sub-document correctly (compact JSON), in parallel when run in a lazy select;
  it is used for `response.output` and for every row's `responses_create_params` (in stateful environments each
  rollout of a task has its own prompt, so a group's first row does not speak for the others).
- Python's json (and orjson) cost 35-65 µs/row here: 1M rows would take a minute, so Python only touches bad chunks
  (see `validate.py`), a sample of each chunk's top-level keys (`extras.py`) and the rows that end up in SFT/DPO files.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from ..records import OutputItem
from ..records import rollout_id as make_rollout_id
from ..schema import dtype_of, row_schema
from .extras import extras_column, piece_keys, shared_scalars
from .status import STATUS_FIELDS, error_json, rollout_status, status_problem

TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
MODEL_ITEM_TYPES = ["message", "reasoning", "function_call"]

# The rollout frame. Free-form nested parts travel as JSON text (pl.String); everything a rule needs is typed.
ROLLOUT_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),  # position in the frame; selections refer to rows by it
    "source": pl.String(),  # portable name of the run, Gym output stem or file the row came from: its group's scope
    "file": pl.String(),  # the file that holds the row (as given: for messages only, never in ids)
    "line": pl.Int64(),  # 1-based line in `file` (the row number for Parquet inputs)
    "group_id": pl.String(),  # "<source>#<task index>", or "<source>#p<sha1 of the prompt>" without a task index
    "task_index": pl.Int64(),
    "rollout_index": pl.Int64(),
    "rollout_id": pl.String(),
    "status": pl.String(),  # ok | failed (ours, or judged for foreign rows: see status.py)
    "finish_reason": pl.String(),  # stop | length | tool_calls | content_filter | null
    "reward": pl.Float64(),
    "output_tokens": pl.Int64(),  # response.usage.output_tokens
    "output_chars": pl.Int64(),  # characters of text, tool arguments and tool outputs in the output
    "num_turns": pl.Int32(),  # model turns: runs of model items between tool outputs
    # what the output ends with: assistant | tool_call | tool_result | user | reasoning | none
    "final_turn": pl.String(),
    # hash of the output without ids and token fields: equal keys = duplicate completions
    "completion_key": pl.UInt64(),
    "prompt_key": pl.UInt64(),  # hash of this rollout's prompt and tools: equal keys = the same prompt
    # JSON list of input items, `instructions` first as a system message (a string input: one user message)
    "prompt": pl.String(),
    "tools": pl.String(),  # JSON list of tools, or null
    "parallel_tool_calls": pl.Boolean(),  # responses_create_params.parallel_tool_calls when the row sets it
    "output": pl.String(),  # JSON list of output items, token fields moved to the columns below
    "extra": pl.String(),  # JSON object of the row's other top-level keys (verifier metadata and fields), or null
    "prompt_token_ids": pl.List(pl.List(pl.Int32())),  # one list per model call, null when absent
    "generation_token_ids": pl.List(pl.List(pl.Int32())),
    "generation_log_probs": pl.List(pl.List(pl.Float32())),
    "error": pl.String(),  # JSON object of a failed rollout's error, or null
}
# The same, as the Schema that DataFrame.cast takes (its mapping form wants selector keys too).
_ROLLOUT_CAST = pl.Schema(ROLLOUT_SCHEMA)

# Token ids as Int32 and log-probabilities as Float32: half the memory of the stored row's types, exact for any
# vocabulary below 2**31 and for the float32 values servers send.
_TOKENS: dict[str, pl.DataType] = {
    "prompt_token_ids": pl.List(pl.Int32()),
    "generation_token_ids": pl.List(pl.Int32()),
    "generation_log_probs": pl.List(pl.Float32()),
}
_ITEM = dtype_of(OutputItem, {"type": True, "role": True, **_TOKENS})
# What read_ndjson parses; unknown keys are ignored. `input` is read only to test presence (see module docstring);
# `instructions` is a JSON string, which read_ndjson decodes exactly. STATUS_FIELDS add what foreign rows carry.
TYPED_SCHEMA: dict[str, pl.DataType] = {
    **row_schema(
        {
            "responses_create_params": {"input": pl.String(), "instructions": True, "parallel_tool_calls": True},
            "response": {"usage": {"output_tokens": True}, "status": True, "incomplete_details": {"reason": True}},
            "reward": True,
            "_ng_task_index": True,
            "_ng_rollout_index": True,
            "rollout_id": True,
            "finish_reason": True,
        }
    ),
    **STATUS_FIELDS,
}
# Output items are decoded from the extracted `response.output` text: 2-3x cheaper than typing them in read_ndjson.
ITEMS_DTYPE = pl.List(_ITEM)

_TOKEN_KEYS = "|".join(TOKEN_FIELDS)
# A token field after another key takes its leading comma; a first one takes its trailing comma (one regex pass).
_TOKEN_VALUE = rf',"(?:{_TOKEN_KEYS})":\[[^\]]*\]|"(?:{_TOKEN_KEYS})":\[[^\]]*\],?'
_NOISE = r'"(?:id|call_id|status)":"(?:[^"\\]|\\.)*"'
_CONTENT_VALUE = r'"(?:text|arguments|output)":"(?:[^"\\]|\\.)*"'


@dataclass(frozen=True)
class Piece:
    """Whole NDJSON lines of one file (a chunk of it, or all of it), with the line number of the first one."""

    file: str  # as given: for messages and the `file` column
    first_line: int
    data: bytes  # ends with a newline


def _raw_lines(data: bytes) -> pl.DataFrame:
    return pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\x1f",  # a raw unit separator cannot occur in valid JSON
        quote_char=None,
        schema={"raw": pl.String()},
    )


def _non_blank(raw: pl.DataFrame) -> pl.DataFrame:
    return raw.filter(pl.col("raw").is_not_null() & (pl.col("raw").str.strip_chars() != ""))


def read_lines(data: bytes, first_line: int) -> pl.DataFrame:
    """Non-blank lines of an NDJSON chunk with their 1-based line numbers (a blank line keeps its number)."""
    return _non_blank(
        _raw_lines(data).with_row_index("line", offset=first_line).with_columns(pl.col("line").cast(pl.Int64))
    )


def _piece_lines(pieces: Sequence[Piece], data: bytes) -> pl.DataFrame:
    """read_lines of several pieces read as one: each line numbered in its own file, with its piece and file."""
    counts = [p.data.count(b"\n") for p in pieces]
    raw = _raw_lines(data)
    if raw.height != sum(counts):  # not one row per newline: let the caller read the pieces one by one
        raise pl.exceptions.ComputeError(f"line count mismatch ({raw.height} read, {sum(counts)} newlines)")
    starts = [0]
    for count in counts[:-1]:
        starts.append(starts[-1] + count)
    spans = pl.DataFrame(
        {
            "piece": range(len(pieces)),
            "base": [p.first_line - start for p, start in zip(pieces, starts, strict=True)],
            "n": counts,
        },
        schema={"piece": pl.Int32, "base": pl.Int64, "n": pl.Int64},
    ).select(pl.col("piece", "base").repeat_by("n").explode())
    lines = pl.concat([raw.with_row_index("index"), spans], how="horizontal").select(
        line=pl.col("index").cast(pl.Int64) + pl.col("base"), raw="raw", piece="piece"
    )
    files = pl.Series("file", [p.file for p in pieces], dtype=pl.String).gather(lines["piece"])
    return _non_blank(lines.with_columns(files))


def parse_pieces(pieces: Sequence[Piece], *, source: str) -> pl.DataFrame:
    """parse_chunk of several pieces of one source at once: per-chunk costs are paid once, not once per piece.

    A collection run is thousands of small shard files (256 rows each by default): parsed one by one, fixed costs
    per chunk (query plans, the extras pass, a Parquet part) took ~50 ms per shard, ~200 s of a 1M-rollout run's
    filter stage. Every result is the same as parsing the pieces one by one (the extra keys are found per piece).
    """
    if len(pieces) == 1:
        piece = pieces[0]
        return parse_chunk(piece.data, read_lines(piece.data, piece.first_line), source=source, file=piece.file)
    data = b"".join(p.data for p in pieces)
    return _parse(data, _piece_lines(pieces, data), source, [len(p.data) for p in pieces])


def parse_chunk(data: bytes, lines: pl.DataFrame, *, source: str, file: str) -> pl.DataFrame:
    """Typed columns + extracted JSON parts for every line, plus a `problem` column (null for a good row).

    Raises polars errors when a line is not JSON or a typed field has the wrong type: the caller then locates the bad
    lines in Python (validate.py). `lines` must be the non-blank lines of `data`, in order.
    """
    lines = lines.with_columns(piece=pl.lit(0, pl.Int32), file=pl.lit(file, pl.String))
    return _parse(data, lines, source, [len(data)])


def _parse(data: bytes, lines: pl.DataFrame, source: str, piece_bytes: list[int]) -> pl.DataFrame:
    """parse_chunk of `lines` (line, raw, piece, file): `data` is the pieces' bytes, `piece_bytes` their sizes."""
    # The scalar extra keys ride along with the typed read (one pass over the lines less); if they make it fail (a
    # later row holds another type), the typed read alone decides and the extras pass reads its keys itself.
    found = piece_keys(lines, len(piece_bytes))
    scalars = shared_scalars(found, TYPED_SCHEMA)
    try:
        typed = pl.read_ndjson(io.BytesIO(data), schema=TYPED_SCHEMA | scalars)
    except pl.exceptions.PolarsError:
        if not scalars:
            raise
        typed, scalars = pl.read_ndjson(io.BytesIO(data), schema=TYPED_SCHEMA), {}
    read = typed.select(list(scalars)) if scalars else None
    typed = typed.select(list(TYPED_SCHEMA))
    if typed.height != lines.height:
        raise pl.exceptions.ComputeError(f"line count mismatch ({typed.height} parsed, {lines.height} lines)")
    df = pl.concat([lines, typed], how="horizontal").lazy()
    resp = pl.col("response")
    params = pl.col("responses_create_params")
    df = df.with_columns(
        output_json=pl.when(resp.is_not_null()).then(pl.col("raw").str.json_path_match("$.response.output")),
        params_json=pl.when(params.is_not_null()).then(pl.col("raw").str.json_path_match("$.responses_create_params")),
    )
    items = pl.col("output_json").str.json_decode(ITEMS_DTYPE)
    types = pl.col("items").list.eval(pl.element().struct.field("type"))
    df = df.with_columns(items=items, rollout_status=rollout_status(resp.is_not_null())).with_columns(
        task_index=pl.col("_ng_task_index"),
        rollout_index=pl.col("_ng_rollout_index"),
        output_tokens=resp.struct.field("usage").struct.field("output_tokens"),
        num_turns=types.list.eval(
            (
                pl.element().is_in(MODEL_ITEM_TYPES) & ~pl.element().shift(1).is_in(MODEL_ITEM_TYPES).fill_null(False)
            ).sum()
        )
        .list.first()
        .cast(pl.Int32),
        final_turn=_final_turn(),
        finish_reason=pl.coalesce(pl.col("finish_reason"), _derived_finish_reason(resp, types)),
        has_input=params.struct.field("input").is_not_null(),
        parallel_tool_calls=params.struct.field("parallel_tool_calls"),
        **{name: _token_lists(pl.col("items"), name) for name in TOKEN_FIELDS},
    )
    df = df.with_columns(
        output=pl.col("output_json").str.replace_all(_TOKEN_VALUE, ""),
        prompt=_prompt(),
        tools=pl.col("params_json").str.json_path_match("$.tools"),
    ).with_columns(
        completion_key=pl.col("output").str.replace_all(_NOISE, "").hash(),
        prompt_key=pl.concat_str(pl.col("prompt"), pl.col("tools").fill_null(""), separator="\x1f").hash(),
        output_chars=pl.col("output")
        .str.extract_all(_CONTENT_VALUE)
        .list.eval(pl.element().str.len_chars() - pl.element().str.find(":") - 3)
        .list.sum()
        .cast(pl.Int64),
    )
    frame = df.collect()
    frame = _with_errors(frame).with_columns(extra=extras_column(frame, data, piece_bytes, found, read))
    return _finish(_with_prompt_digests(frame), source)


def _final_turn() -> pl.Expr:
    """The last output item that is not reasoning, as a kind of turn (SFT needs a final assistant turn)."""
    last = pl.col("items").list.eval(pl.element().filter(pl.element().struct.field("type") != "reasoning")).list.last()
    kind, role = last.struct.field("type"), last.struct.field("role")
    only_reasoning = pl.col("items").list.len() > 0
    return (
        pl.when(kind == "function_call")
        .then(pl.lit("tool_call"))
        .when(kind == "function_call_output")
        .then(pl.lit("tool_result"))
        .when((kind == "message") & (role.is_null() | (role == "assistant")))
        .then(pl.lit("assistant"))
        .when(kind == "message")
        .then(role)
        .when(kind.is_not_null())
        .then(kind)
        .when(only_reasoning)
        .then(pl.lit("reasoning"))
        .otherwise(pl.lit("none"))
    )


def _prompt() -> pl.Expr:
    """This row's input as a JSON list of items, `instructions` first as a system message."""
    params = pl.col("params_json")
    given = params.str.json_path_match("$.input")
    is_list = params.str.json_path_match("$.input[0]").is_not_null() | (given == "[]")
    as_list = (
        pl.when(is_list)
        .then(given)
        .when(given.is_not_null())
        .then(
            pl.concat_str(pl.lit("["), pl.struct(role=pl.lit("user"), content=given).struct.json_encode(), pl.lit("]"))
        )
    )
    instructions = pl.col("responses_create_params").struct.field("instructions")
    system = pl.struct(role=pl.lit("system"), content=instructions).struct.json_encode()
    rest = as_list.str.strip_prefix("[")
    with_system = pl.concat_str(pl.lit("["), system, pl.when(rest == "]").then(rest).otherwise(pl.lit(",") + rest))
    return (
        pl.when(instructions.is_not_null() & (instructions != "") & as_list.is_not_null())
        .then(with_system)
        .otherwise(as_list)
    )


def _derived_finish_reason(resp: pl.Expr, types: pl.Expr) -> pl.Expr:
    reason = resp.struct.field("incomplete_details").struct.field("reason")
    status = resp.struct.field("status")
    return (
        pl.when((status == "incomplete") & (reason == "max_output_tokens"))
        .then(pl.lit("length"))
        .when((status == "incomplete") & (reason == "content_filter"))
        .then(pl.lit("content_filter"))
        .when(types.list.last() == "function_call")
        .then(pl.lit("tool_calls"))
        .when(resp.is_not_null() & (status.is_null() | (status == "completed")))
        .then(pl.lit("stop"))
    )


def _with_errors(df: pl.DataFrame) -> pl.DataFrame:
    """The error column, computed on failed rows only (each field is another pass over the raw line)."""
    failed = df.with_row_index("_at").filter(pl.col("rollout_status") == "failed")
    if failed.height == 0:
        return df.with_columns(error=pl.lit(None, pl.String))
    errors = failed.select("_at", error=error_json(pl.col("response").is_not_null()))  # lines repeat across pieces
    return df.with_row_index("_at").join(errors, on="_at", how="left", maintain_order="left").drop("_at")


def _token_lists(items: pl.Expr, name: str) -> pl.Expr:
    lists = items.list.eval(pl.element().struct.field(name).drop_nulls())
    return pl.when(lists.list.len() > 0).then(lists)


def _with_prompt_digests(df: pl.DataFrame) -> pl.DataFrame:
    """Rows without a task index are grouped by a digest of their prompt."""
    missing = df.filter(pl.col("task_index").is_null() & pl.col("prompt").is_not_null())
    if not missing.height:
        return df.with_columns(prompt_digest=pl.lit(None, pl.String))
    digests = {p: hashlib.sha1(p.encode()).hexdigest()[:12] for p in missing["prompt"].unique().to_list()}
    return df.with_columns(
        prompt_digest=pl.when(pl.col("task_index").is_null()).then(
            pl.col("prompt").replace_strict(digests, default=None)
        )
    )


def _finish(df: pl.DataFrame, source: str) -> pl.DataFrame:
    df = df.with_columns(status=pl.col("rollout_status"), source=pl.lit(source))
    missing_ids = df.filter(pl.col("rollout_id").is_null())
    if missing_ids.height:
        df = df.with_columns(rollout_id=pl.coalesce(pl.col("rollout_id"), pl.lit(_derived_ids(df, source))))
    df = df.with_columns(
        group_id=pl.when(pl.col("task_index").is_not_null())
        .then(pl.format("{}#{}", pl.lit(source), pl.col("task_index")))
        .when(pl.col("prompt_digest").is_not_null())
        .then(pl.format("{}#p{}", pl.lit(source), pl.col("prompt_digest")))
        .otherwise(pl.format("{}#r{}", pl.lit(source), pl.col("rollout_id"))),
        problem=_problem(),
    )
    return df.with_columns(row=pl.lit(0, pl.Int64)).select(*ROLLOUT_SCHEMA, "problem").cast(_ROLLOUT_CAST)


def _problem() -> pl.Expr:
    ok = pl.col("status") == "ok"
    return (
        pl.when(status_problem().is_not_null())
        .then(status_problem())
        .when(
            ~pl.col("has_input") & (ok | (pl.col("schema_version").is_null() & pl.col("_ng_failure_class").is_null()))
        )
        .then(pl.lit("missing responses_create_params.input"))  # a failed row of ours or a Gym failure row may lack it
        .when(ok & pl.col("response").is_null())
        .then(pl.lit("missing response"))
        .when(ok & pl.col("output").is_null())
        .then(pl.lit("missing response.output"))
        .when(ok & pl.col("reward").is_null())
        .then(pl.lit("missing reward"))
        .when(ok & pl.col("reward").is_nan())
        .then(pl.lit("reward is NaN"))
        .when(ok & pl.col("reward").is_infinite())
        .then(pl.lit("reward is not finite"))
        .when(_any_token(pl.col("prompt_token_ids"), _bad_id) | _any_token(pl.col("generation_token_ids"), _bad_id))
        .then(pl.lit(f"token id out of range (not an integer from 0 to {TOKEN_ID_MAX:,})"))
        .when(_any_token(pl.col("generation_log_probs"), _bad_log_prob))
        .then(pl.lit("log-probability not finite (or beyond float32)"))
    )


# Token ids are read as Int32: an id past it (or not an integer) reads as null, and so does a JSON null in the list.
TOKEN_ID_MAX = 2**31 - 1


def _bad_id(token: pl.Expr) -> pl.Expr:
    return token.is_null() | (token < 0)


def _bad_log_prob(value: pl.Expr) -> pl.Expr:
    return value.is_null() | ~value.is_finite()  # Float32: 1e308 reads as inf


def _any_token(column: pl.Expr, bad: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """Whether any value in a per-call list of token lists is bad (false when the column is null)."""
    per_call = pl.element().list.eval(bad(pl.element())).list.any()
    return column.list.eval(per_call).list.any().fill_null(False)


def _derived_ids(df: pl.DataFrame, source: str) -> pl.Series:
    """records.rollout_id(source, task, rollout) when both indices exist, else a digest of source, file name, line."""
    ids = []
    for task, rollout, line, file in df.select("task_index", "rollout_index", "line", "file").iter_rows():
        if task is not None and rollout is not None:
            ids.append(make_rollout_id(source, task, rollout))
        else:
            name = file.replace("\\", "/").rsplit("/", 1)[-1]
            ids.append(hashlib.sha256(f"{source}:{name}:{line}".encode()).hexdigest()[:20])
    return pl.Series(ids, dtype=pl.String)


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=ROLLOUT_SCHEMA)

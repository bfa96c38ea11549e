"""The rollout frame: its one explicit polars schema, and the vectorised parser that turns NDJSON bytes into it.

Why it is built this way (measured with polars 2.1 on the 2-core dev machine, 1.45 KB rollout rows):
- `read_ndjson` with an explicit schema parses the *typed* fields fast (~3 µs/row), but its String capture of a nested
  object or array loses escapes (`"\\\\boxed"` comes back as `\\boxed`, `\\t` as a raw tab), which corrupts the JSON of
  math rollouts. So nested free-form parts are never read that way.
- `str.json_path_match` re-serialises a sub-document correctly (compact JSON), in parallel when run in a lazy select;
  it is used for `response.output`, and for `responses_create_params` only on the first row of each group (a
  group's rollouts share their prompt).
- Python's json (and orjson) cost 35-65 µs/row here: 1M rows would take a minute, so Python only touches bad chunks
  (see `validate.py`) and the rows that end up in SFT/DPO files.
"""

from __future__ import annotations

import hashlib
import io

import polars as pl

from ..records import rollout_id as make_rollout_id

TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
MODEL_ITEM_TYPES = ["message", "reasoning", "function_call"]

# The rollout frame. Free-form nested parts travel as JSON text (pl.String); everything a rule needs is typed.
ROLLOUT_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),  # position in the frame; selections refer to rows by it
    "source": pl.String(),  # the run directory or file the row came from: the scope of its group
    "file": pl.String(),  # the file that holds the row
    "line": pl.Int64(),  # 1-based line in `file` (the row number for Parquet inputs)
    "group_id": pl.String(),  # "<source>#<task index>", or "<source>#p<sha1 of the prompt>" without a task index
    "task_index": pl.Int64(),
    "rollout_index": pl.Int64(),
    "rollout_id": pl.String(),
    "status": pl.String(),  # ok | failed
    "finish_reason": pl.String(),  # stop | length | tool_calls | content_filter | null
    "reward": pl.Float64(),
    "output_tokens": pl.Int64(),  # response.usage.output_tokens
    "output_chars": pl.Int64(),  # characters of text, tool arguments and tool outputs in the output
    "num_turns": pl.Int32(),  # model turns: runs of model items between tool outputs
    "completion_key": pl.UInt64(),  # hash of the output without ids and token fields: equal keys = duplicate completions
    "prompt": pl.String(),  # JSON list of input items (a bare string input becomes one user message)
    "tools": pl.String(),  # JSON list of tools, or null
    "output": pl.String(),  # JSON list of output items, token fields moved to the columns below
    "prompt_token_ids": pl.List(pl.List(pl.Int32())),  # one list per model call, null when absent
    "generation_token_ids": pl.List(pl.List(pl.Int32())),
    "generation_log_probs": pl.List(pl.List(pl.Float32())),
    "error": pl.String(),  # JSON object of a failed rollout's error, or null
}

_ITEM = pl.Struct(
    {
        "type": pl.String(),
        "prompt_token_ids": pl.List(pl.Int32()),
        "generation_token_ids": pl.List(pl.Int32()),
        "generation_log_probs": pl.List(pl.Float32()),
    }
)
# What read_ndjson parses; unknown keys are ignored. `input` is read only to test presence (see module docstring).
TYPED_SCHEMA: dict[str, pl.DataType] = {
    "responses_create_params": pl.Struct({"input": pl.String()}),
    "response": pl.Struct(
        {
            "usage": pl.Struct({"output_tokens": pl.Int64()}),
            "status": pl.String(),
            "incomplete_details": pl.Struct({"reason": pl.String()}),
        }
    ),
    "reward": pl.Float64(),
    "_ng_task_index": pl.Int64(),
    "_ng_rollout_index": pl.Int64(),
    "rollout_id": pl.String(),
    "status": pl.String(),
    "finish_reason": pl.String(),
}
# Output items are decoded from the extracted `response.output` text: 2-3x cheaper than typing them in read_ndjson.
ITEMS_DTYPE = pl.List(_ITEM)

_TOKEN_KEYS = "|".join(TOKEN_FIELDS)
# A token field after another key takes its leading comma; a first one takes its trailing comma (one regex pass).
_TOKEN_VALUE = rf',"(?:{_TOKEN_KEYS})":\[[^\]]*\]|"(?:{_TOKEN_KEYS})":\[[^\]]*\],?'
_NOISE = r'"(?:id|call_id|status)":"(?:[^"\\]|\\.)*"'
_CONTENT_VALUE = r'"(?:text|arguments|output)":"(?:[^"\\]|\\.)*"'


def read_lines(data: bytes, first_line: int) -> pl.DataFrame:
    """Non-blank lines of an NDJSON chunk with their 1-based line numbers (a blank line keeps its number)."""
    raw = pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\x1f",  # a raw unit separator cannot occur in valid JSON
        quote_char=None,
        schema={"raw": pl.String()},
    )
    return raw.with_row_index("line", offset=first_line).with_columns(pl.col("line").cast(pl.Int64)).filter(
        pl.col("raw").is_not_null() & (pl.col("raw").str.strip_chars() != "")
    )


def parse_chunk(data: bytes, lines: pl.DataFrame, *, source: str, file: str) -> pl.DataFrame:
    """Typed columns + extracted JSON parts for every line, plus a `problem` column (null for a good row).

    Raises polars errors when a line is not JSON or a typed field has the wrong type: the caller then locates the bad
    lines in Python (validate.py). `lines` must be the non-blank lines of `data`, in order.
    """
    typed = pl.read_ndjson(io.BytesIO(data), schema=TYPED_SCHEMA)
    if typed.height != lines.height:
        raise pl.exceptions.ComputeError(f"line count mismatch ({typed.height} parsed, {lines.height} lines)")
    df = pl.concat([lines, typed], how="horizontal").lazy()
    resp = pl.col("response")
    df = df.with_columns(output_json=pl.when(resp.is_not_null()).then(pl.col("raw").str.json_path_match("$.response.output")))
    items = pl.col("output_json").str.json_decode(ITEMS_DTYPE)
    types = pl.col("items").list.eval(pl.element().struct.field("type"))
    df = df.with_columns(items=items).with_columns(
        task_index=pl.col("_ng_task_index"),
        rollout_index=pl.col("_ng_rollout_index"),
        status=pl.col("status").fill_null("ok"),
        output_tokens=resp.struct.field("usage").struct.field("output_tokens"),
        num_turns=types.list.eval(
            (pl.element().is_in(MODEL_ITEM_TYPES) & ~pl.element().shift(1).is_in(MODEL_ITEM_TYPES).fill_null(False)).sum()
        )
        .list.first()
        .cast(pl.Int32),
        finish_reason=pl.coalesce(pl.col("finish_reason"), _derived_finish_reason(resp, types)),
        has_input=pl.col("responses_create_params").struct.field("input").is_not_null(),
        **{name: _token_lists(pl.col("items"), name) for name in TOKEN_FIELDS},
    )
    df = df.with_columns(
        output=pl.col("output_json").str.replace_all(_TOKEN_VALUE, ""),
    ).with_columns(
        completion_key=pl.col("output").str.replace_all(_NOISE, "").hash(),
        output_chars=pl.col("output")
        .str.extract_all(_CONTENT_VALUE)
        .list.eval(pl.element().str.len_chars() - pl.element().str.find(":") - 3)
        .list.sum()
        .cast(pl.Int64),
        error=pl.when(pl.col("status") == "failed").then(_error_json()),
    )
    df = _attach_prompts(df.collect())
    return _finish(df, source, file)


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


def _error_json() -> pl.Expr:
    """A failed row's error as a JSON object, even when the producer stored a bare string."""
    raw = pl.col("raw").str
    return pl.struct(
        type=raw.json_path_match("$.error.type"),
        message=pl.coalesce(raw.json_path_match("$.error.message"), raw.json_path_match("$.error")),
        status_code=raw.json_path_match("$.error.status_code").cast(pl.Int64, strict=False),
        stage=raw.json_path_match("$.error.stage"),
    ).struct.json_encode()


def _token_lists(items: pl.Expr, name: str) -> pl.Expr:
    lists = items.list.eval(pl.element().struct.field(name).drop_nulls())
    return pl.when(lists.list.len() > 0).then(lists)


def _attach_prompts(df: pl.DataFrame) -> pl.DataFrame:
    """Cut `input` and `tools` out of the first row of each group only, and share them with the group's rows."""
    # the group key inside a chunk: the task index, or the line itself when there is none (hashed after extraction)
    df = df.with_columns(key_line=pl.when(pl.col("task_index").is_null()).then(pl.col("line")))
    keys = ["task_index", "key_line"]
    firsts = (
        df.lazy()
        .filter(pl.struct(keys).is_first_distinct() & pl.col("has_input"))
        .select(*keys, params=pl.col("raw").str.json_path_match("$.responses_create_params"))
        .with_columns(
            input=pl.col("params").str.json_path_match("$.input"),
            first=pl.col("params").str.json_path_match("$.input[0]"),
            tools=pl.col("params").str.json_path_match("$.tools"),
        )
        .select(
            *keys,
            "tools",
            prompt=pl.when(pl.col("first").is_not_null())
            .then(pl.col("input"))
            .when(pl.col("input").is_not_null() & (pl.col("input") != "[]"))
            .then(
                pl.concat_str(
                    pl.lit("["),
                    pl.struct(role=pl.lit("user"), content=pl.col("input")).struct.json_encode(),
                    pl.lit("]"),
                )
            ),
        )
        .collect()
    )
    df = df.join(firsts, on=keys, how="left", nulls_equal=True, maintain_order="left")
    missing = df.filter(pl.col("task_index").is_null() & pl.col("prompt").is_not_null())
    if missing.height:
        digests = {p: hashlib.sha1(p.encode()).hexdigest()[:12] for p in missing["prompt"].unique().to_list()}
        df = df.with_columns(prompt_digest=pl.col("prompt").replace_strict(digests, default=None))
    else:
        df = df.with_columns(prompt_digest=pl.lit(None, pl.String))
    return df


def _finish(df: pl.DataFrame, source: str, file: str) -> pl.DataFrame:
    df = df.with_columns(
        source=pl.lit(source),
        file=pl.lit(file),
        group_id=pl.when(pl.col("task_index").is_not_null())
        .then(pl.format("{}#{}", pl.lit(source), pl.col("task_index")))
        .when(pl.col("prompt_digest").is_not_null())
        .then(pl.format("{}#p{}", pl.lit(source), pl.col("prompt_digest"))),
        problem=_problem(),
    )
    missing_ids = df.filter(pl.col("rollout_id").is_null())
    if missing_ids.height:
        df = df.with_columns(rollout_id=pl.coalesce(pl.col("rollout_id"), pl.lit(_derived_ids(df, source, file))))
    return df.with_columns(row=pl.lit(0, pl.Int64)).select(*ROLLOUT_SCHEMA, "problem").cast(ROLLOUT_SCHEMA)


def _problem() -> pl.Expr:
    ok = pl.col("status") == "ok"
    return (
        pl.when(~pl.col("has_input"))
        .then(pl.lit("missing responses_create_params.input"))
        .when(pl.col("prompt").is_null())
        .then(pl.lit("responses_create_params.input is empty"))
        .when(~pl.col("status").is_in(["ok", "failed"]))
        .then(pl.format("unknown status {}", pl.col("status")))
        .when(ok & pl.col("response").is_null())
        .then(pl.lit("missing response"))
        .when(ok & pl.col("output").is_null())
        .then(pl.lit("missing response.output"))
        .when(ok & pl.col("reward").is_null())
        .then(pl.lit("missing reward"))
        .when(ok & pl.col("reward").is_nan())
        .then(pl.lit("reward is NaN"))
    )


def _derived_ids(df: pl.DataFrame, source: str, file: str) -> pl.Series:
    """records.rollout_id(source, task, rollout) when both indices exist, else a digest of file and line."""
    ids = []
    for task, rollout, line in df.select("task_index", "rollout_index", "line").iter_rows():
        if task is not None and rollout is not None:
            ids.append(make_rollout_id(source, task, rollout))
        else:
            ids.append(hashlib.sha256(f"{file}:{line}".encode()).hexdigest()[:20])
    return pl.Series(ids, dtype=pl.String)


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=ROLLOUT_SCHEMA)

"""The check frame: one row per rollout with the columns the checks read, extracted once from raw rollout lines.

A chunk of lines is first decoded into flat columns, one row per rollout (ROWS_SCHEMA) and one per output item
(ITEMS_SCHEMA), by one of two decoders that give the same columns:
- msgspec (typed.py), typed to the fields read, for every block it can read exactly as polars does;
- polars, for the other blocks: token arrays counted (`generation_token_ids`, by regex) and cut out of each line, the
  rest decoded with `str.json_decode` into the small `ROW_DTYPE`; lines polars refuses (not JSON, a field of another
  type) go to `decode_python`, which coerces each row into the same dtype (`split_decoded` flattens the result).
`flatten` then folds the items back per rollout: the final turn (the model items after the last tool output that
precedes them), its answer text, reasoning and tool calls, every tool call and tool output. Tool schemas are never
typed: `tools` holds the exact JSON of the tool list of each row that calls tools (see `loader.ToolLists`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

S = pl.String()
_PART = pl.Struct({"type": S, "text": S, "refusal": S})
ITEM_DTYPE = pl.Struct(
    {
        "type": S,
        "role": S,
        "name": S,
        "arguments": S,
        "call_id": S,
        "output": S,
        "content": pl.List(_PART),
        "summary": pl.List(_PART),
    }
)
# What is decoded of each row; every other key is skipped (tool lists are read apart, for the rows that call tools).
ROW_DTYPE = pl.Struct(
    {
        "rollout_id": S,
        "_ng_task_index": pl.Int64(),
        "_ng_rollout_index": pl.Int64(),
        "agent_ref": pl.Struct({"name": S}),
        "schema_version": S,
        "status": S,
        "_ng_failure_class": S,
        "finish_reason": S,
        "end_reason": S,
        "sampling": pl.Struct({"temperature": pl.Float64()}),
        "responses_create_params": pl.Struct({"temperature": pl.Float64()}),
        "response": pl.Struct(
            {
                "status": S,
                "incomplete_details": pl.Struct({"reason": S}),
                "usage": pl.Struct({"output_tokens": pl.Int64()}),
                "output": pl.List(ITEM_DTYPE),
            }
        ),
    }
)

# The check frame. Text columns hold whole texts: the engine keeps only KEPT_COLUMNS of each chunk after the rollout
# checks, so memory is bounded by the chunk, not the run.
FRAME_SCHEMA: dict[str, pl.DataType] = {
    "rollout_id": S,  # the row's own, or derived like records.rollout_id from source and indices
    "source": S,  # run folder or file stem: with task_index, the group
    "file": S,
    "line": pl.Int64(),  # where the row is (1-based line)
    "task_index": pl.Int64(),
    "rollout_index": pl.Int64(),
    "env": S,  # agent_ref.name
    "temperature": pl.Float64(),  # sampling.temperature (what was sent), else responses_create_params.temperature
    "failed": pl.Boolean(),  # ours with status failed, a NeMo Gym failure row, or no response: not checked
    "finish_reason": S,
    "response_status": S,  # response.status: completed | incomplete | failed...
    "incomplete_reason": S,
    "end_reason": S,
    "output_tokens": pl.Int64(),  # response.usage.output_tokens
    "gen_tokens": pl.Int64(),  # generation_token_ids over every output item; null when the row has none
    "items": pl.Int32(),  # output items
    "final_text": S,  # answer text (message content) of the final turn
    "final_reasoning": S,  # reasoning text (summary and content) of the final turn
    "final_arguments": S,  # arguments of the final turn's function calls, one per line
    "final_calls": pl.Int32(),  # function calls in the final turn
    "tool_calls": pl.List(pl.Struct({"name": S, "arguments": S})),  # every function call of the rollout
    "tool_outputs": pl.List(pl.Struct({"name": S, "output": S})),  # every function_call_output, with its call's name
    "tools": S,  # JSON list of the row's tools ({"name", "parameters"}), null when it declares none
    "completion_key": pl.UInt64(),  # hash of all model items' text: equal keys = identical completions
    "completion_preview": S,  # the start of the answer (else of the final turn's text), for evidence
}
KEPT_COLUMNS = (
    "rollout_id",
    "source",
    "file",
    "line",
    "task_index",
    "rollout_index",
    "env",
    "temperature",
    "completion_key",
    "completion_preview",
)
PREVIEW_CHARS = 120

_TOKEN_KEYS = "prompt_token_ids|generation_token_ids|generation_log_probs"
TOKEN_RE = rf',"(?:{_TOKEN_KEYS})":\s*\[[^\]]*\]|"(?:{_TOKEN_KEYS})":\s*\[[^\]]*\],?'
DECODED_COLUMNS = ("file", "line", "raw", "gen_tokens", "doc")
GEN_RE = r'"generation_token_ids":\s*\[[^\]]*\]'


def decode(lines: pl.DataFrame) -> pl.DataFrame:
    """`lines` (file, line, raw) with `doc` (ROW_DTYPE) and `gen_tokens` added, and `raw` without its token arrays;
    raises a polars error on a line that is not a JSON object of the expected types."""
    raw = pl.col("raw")
    gen = raw.str.extract_all(GEN_RE)
    return (
        lines.lazy()
        .with_columns(
            gen_tokens=pl.when(gen.list.len() > 0).then(
                gen.list.eval(pl.element().str.count_matches(r"-?\d+")).list.sum()
            ),
            raw=raw.str.replace_all(TOKEN_RE, ""),
        )
        .with_columns(doc=raw.str.json_decode(ROW_DTYPE))
        .collect()
        .with_columns(pl.col("gen_tokens").cast(pl.Int64))
        .select(DECODED_COLUMNS)
    )


def decode_python(lines: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, int, str]]]:
    """`decode` one row at a time: rows of other types are coerced into ROW_DTYPE; returns the decoded lines and the
    lines that are not JSON objects as (file, line, reason)."""
    keep: list[int] = []
    docs: list[dict[str, Any] | None] = []
    gens: list[int | None] = []
    bad: list[tuple[str, int, str]] = []
    for at, (file, line, raw) in enumerate(lines.select("file", "line", "raw").iter_rows()):
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            bad.append((file, line, f"not JSON ({exc})"))
            continue
        if not isinstance(row, dict):
            bad.append((file, line, "not a JSON object"))
            continue
        keep.append(at)
        gens.append(_count_generation_ids(row))
        docs.append(coerce(row, ROW_DTYPE))
    out = lines[keep].with_columns(gen_tokens=pl.Series(gens, dtype=pl.Int64), doc=pl.Series(docs, dtype=ROW_DTYPE))
    return out.select(DECODED_COLUMNS), bad


def _count_generation_ids(row: dict[str, Any]) -> int | None:
    response = row.get("response")
    output = response.get("output") if isinstance(response, dict) else None
    counts = [
        len(item["generation_token_ids"])
        for item in output or []
        if isinstance(item, dict) and isinstance(item.get("generation_token_ids"), list)
    ]
    return sum(counts) if counts else None


def coerce(value: Any, dtype: PolarsDataType) -> Any:
    """`value` shaped to `dtype`: what cannot be converted becomes null; a nested value where text is expected becomes
    its JSON; a bare string where a list of text parts is expected becomes one part."""
    if value is None:
        return None
    if isinstance(dtype, pl.String):
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if isinstance(dtype, pl.Int64):
        if isinstance(value, bool):
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and -(2**63) <= value < 2**63 else None
    if isinstance(dtype, pl.Float64):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if isinstance(dtype, pl.Struct):
        if not isinstance(value, dict):
            return None
        return {f.name: coerce(value.get(f.name), f.dtype) for f in dtype.fields}
    if isinstance(dtype, pl.List):
        inner = dtype.inner
        if isinstance(value, str) and isinstance(inner, pl.Struct) and "text" in inner.to_schema():
            value = [{"type": "output_text", "text": value}]
        if not isinstance(value, list):
            return None
        return [coerce(v, inner) for v in value]
    raise TypeError(f"no coercion to {dtype}")


# Each rollout's scalar fields, one row per rollout (`_i` its position in the chunk): what both decoders produce.
ROWS_SCHEMA: dict[str, pl.DataType] = {
    "_i": pl.UInt32(),
    "file": S,
    "line": pl.Int64(),
    "gen_tokens": pl.Int64(),
    "rollout_id": S,
    "task_index": pl.Int64(),
    "rollout_index": pl.Int64(),
    "env": S,
    "temperature": pl.Float64(),
    "ours": pl.Boolean(),  # schema_version present
    "status": S,
    "failure": pl.Boolean(),  # _ng_failure_class present
    "has_response": pl.Boolean(),
    "finish_reason": S,
    "response_status": S,
    "incomplete_reason": S,
    "end_reason": S,
    "output_tokens": pl.Int64(),
    "tools": S,
}
# Every output item, one row per item in order (null items left out); content and summary as their joined texts.
ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "_i": pl.UInt32(),
    "type": S,
    "role": S,
    "name": S,
    "arguments": S,
    "call_id": S,
    "output": S,
    "content": S,  # the parts' text (else refusal) joined with "", null when the item has no content list
    "summary": S,  # the parts' text joined with "\n", null when the item has no summary list
}


def split_decoded(decoded: pl.DataFrame, tools: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """ROWS_SCHEMA and ITEMS_SCHEMA frames of lines decoded into `doc` (ROW_DTYPE); `tools` per row as JSON."""
    decoded = decoded.with_row_index("_i")
    doc = pl.col("doc")
    resp = doc.struct.field("response")
    rows = decoded.select(
        "_i",
        "file",
        "line",
        "gen_tokens",
        rollout_id=doc.struct.field("rollout_id"),
        task_index=doc.struct.field("_ng_task_index"),
        rollout_index=doc.struct.field("_ng_rollout_index"),
        env=doc.struct.field("agent_ref").struct.field("name"),
        temperature=pl.coalesce(
            doc.struct.field("sampling").struct.field("temperature"),
            doc.struct.field("responses_create_params").struct.field("temperature"),
        ),
        ours=doc.struct.field("schema_version").is_not_null(),
        status=doc.struct.field("status"),
        failure=doc.struct.field("_ng_failure_class").is_not_null(),
        has_response=resp.is_not_null(),
        finish_reason=doc.struct.field("finish_reason"),
        response_status=resp.struct.field("status"),
        incomplete_reason=resp.struct.field("incomplete_details").struct.field("reason"),
        end_reason=doc.struct.field("end_reason"),
        output_tokens=resp.struct.field("usage").struct.field("output_tokens"),
        tools=tools,
    )
    part_text = pl.coalesce(pl.element().struct.field("text"), pl.element().struct.field("refusal"))
    items = (
        decoded.select("_i", item=resp.struct.field("output"))
        .explode("item")
        .drop_nulls("item")
        .unnest("item")
        .with_columns(
            content=pl.col("content").list.eval(part_text).list.join(""),
            summary=pl.col("summary").list.eval(pl.element().struct.field("text")).list.join("\n"),
        )
    )
    return rows.cast(pl.Schema(ROWS_SCHEMA)), items.select(list(ITEMS_SCHEMA)).cast(pl.Schema(ITEMS_SCHEMA))


def _item_text() -> pl.Expr:
    kind, content = pl.col("type"), pl.col("content")
    reasoning = pl.concat_str(pl.col("summary").fill_null(""), content.fill_null(""), separator="\n").str.strip_chars(
        "\n"
    )
    return (
        pl.when(kind == "message")
        .then(content.fill_null(""))
        .when(kind == "reasoning")
        .then(reasoning)
        .when(kind == "function_call")
        .then(pl.col("arguments").fill_null(""))
        .otherwise(pl.lit(""))
    )


def _fold_items(items: pl.DataFrame) -> pl.DataFrame:
    """Per-rollout columns from the output items (rows without items are absent: the caller fills them)."""
    kind = pl.col("type")
    items = items.with_columns(
        text=_item_text(),
        model=kind.is_in(["reasoning", "function_call"])
        | ((kind == "message") & pl.col("role").is_null().or_(pl.col("role") == "assistant")),
        turn=(kind == "function_call_output").cum_sum().over("_i"),
    ).with_columns(final=pl.col("model") & (pl.col("turn") == pl.col("turn").filter(pl.col("model")).max().over("_i")))
    names = (
        items.filter(kind == "function_call")
        .select("_i", "call_id", call_name="name")
        .drop_nulls("call_id")
        .unique(["_i", "call_id"], keep="first")
    )
    items = items.join(names, on=["_i", "call_id"], how="left")
    final, call = pl.col("final"), kind == "function_call"
    signature = pl.concat_str(kind, pl.col("name").fill_null(""), pl.col("text"), separator="\x1e")
    return items.group_by("_i").agg(
        items=pl.len().cast(pl.Int32),
        final_text=pl.col("text").filter(final & (kind == "message")).str.join(""),
        final_reasoning=pl.col("text").filter(final & (kind == "reasoning")).str.join("\n"),
        final_arguments=pl.col("text").filter(final & call).str.join("\n"),
        final_calls=(final & call).sum().cast(pl.Int32),
        tool_calls=pl.struct("name", "arguments").filter(call),
        tool_outputs=pl.struct(name="call_name", output="output").filter(kind == "function_call_output"),
        completion_key=signature.filter(pl.col("model")).str.join("\x1f").hash(seed=0),
    )


def flatten(rows: pl.DataFrame, items: pl.DataFrame, source: str) -> pl.DataFrame:
    """The check frame (FRAME_SCHEMA) of a chunk's rows (ROWS_SCHEMA) and output items (ITEMS_SCHEMA)."""
    base = rows.with_columns(
        source=pl.lit(source, S),
        failed=(pl.col("ours") & (pl.col("status") == "failed")).fill_null(False)
        | pl.col("failure")
        | ~pl.col("has_response"),
    )
    frame = (
        base.join(_fold_items(items), on="_i", how="left")
        .sort("_i")
        .with_columns(
            items=pl.col("items").fill_null(0),
            final_calls=pl.col("final_calls").fill_null(0),
            tool_calls=pl.col("tool_calls").fill_null([]),
            tool_outputs=pl.col("tool_outputs").fill_null([]),
            completion_key=pl.col("completion_key").fill_null(pl.lit("", S).hash(seed=0)),
            **{name: pl.col(name).fill_null("") for name in ("final_text", "final_reasoning", "final_arguments")},
        )
    )
    answer = pl.col("final_text")
    frame = frame.with_columns(
        completion_preview=pl.when(answer.str.strip_chars() != "")
        .then(answer)
        .when(pl.col("final_reasoning") != "")
        .then(pl.col("final_reasoning"))
        .otherwise(pl.col("final_arguments"))
        .str.slice(0, PREVIEW_CHARS)
    )
    return _with_ids(frame.select(list(FRAME_SCHEMA)).cast(pl.Schema(FRAME_SCHEMA)), source)


def _with_ids(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Rows without their own rollout_id get records.rollout_id(source, task, rollout), or a digest of source, file
    name and line without indices (the ids `rollouts process` derives for the same rows)."""
    missing = frame["rollout_id"].is_null()
    if not missing.any():
        return frame
    ids = []
    for task, rollout, file, line in (
        frame.filter(missing).select("task_index", "rollout_index", "file", "line").iter_rows()
    ):
        if task is not None and rollout is not None:
            key = f"{source}/{task}/{rollout}"
        else:
            name = (file or "").replace("\\", "/").rsplit("/", 1)[-1]
            key = f"{source}:{name}:{line}"
        ids.append(hashlib.sha256(key.encode()).hexdigest()[:20])
    positions = missing.arg_true()
    return frame.with_columns(rollout_id=frame["rollout_id"].scatter(positions, pl.Series(ids, dtype=S)))


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=FRAME_SCHEMA)

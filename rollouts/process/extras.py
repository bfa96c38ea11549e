"""The `extra` column: a row's other top-level keys (verifier metadata and verifier fields) as one JSON object.

Kept for every row: what the rules read is excluded (`responses_create_params`, `response`, `reward`, the indices,
`rollout_id`, `finish_reason`), and so are NeMo Gym's own bookkeeping keys (`_ng_*`, `ng_*`: markers, trajectories,
perf records). On our own rows (with `schema_version`) our bookkeeping is excluded too; on any other row `status`,
`error`, `attempts`... are the producer's fields and are kept. A key whose value is null is left out.

Cost: the key names come from a sample of each chunk's rows, parsed in Python (a key on none of ~1,000 sampled rows
of a 64 MB chunk is not carried). Values are exact: strings, integers and booleans come typed from read_ndjson in one
pass; any other value is cut out of the line with `json_path_match` (compact JSON).
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import polars as pl

RULE_KEYS = frozenset({"responses_create_params", "response", "reward", "_ng_task_index", "_ng_rollout_index", "rollout_id", "finish_reason"})
OUR_KEYS = frozenset({"status", "error", "attempts", "timings", "schema_version", "sampling", "_session"})
SAMPLE_HEAD = 500
SAMPLE_SPREAD = 500

_SCALAR_TYPES: dict[type, pl.DataType] = {str: pl.String(), int: pl.Int64(), bool: pl.Boolean()}


def _skipped(key: str) -> bool:
    return key in RULE_KEYS or key.startswith(("_ng_", "ng_"))


def _sample(raw: pl.Series) -> list[str]:
    n = raw.len()
    if n <= SAMPLE_HEAD + SAMPLE_SPREAD:
        return raw.to_list()
    step = max(1, (n - SAMPLE_HEAD) // SAMPLE_SPREAD)
    return raw.head(SAMPLE_HEAD).to_list() + raw.slice(SAMPLE_HEAD).gather_every(step).to_list()


def discover(raw: pl.Series) -> dict[str, pl.DataType | None]:
    """Extra keys of the sampled rows -> the scalar dtype that reads them exactly, or None (cut out as JSON).

    Rows are told apart by their keys and value types only, so the Python work per key is done once per distinct
    shape: the rows of a collection run have a handful of shapes, and every row of a small shard is sampled.
    """
    shapes: dict[tuple[tuple[str, ...], tuple[type, ...]], None] = {}  # in first-seen order: it orders the keys
    for text in _sample(raw):
        try:
            row = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(row, dict):
            shapes[tuple(row), tuple(map(type, row.values()))] = None
    kinds: dict[str, set[type]] = {}
    for keys, types in shapes:
        ours = "schema_version" in keys
        for key, kind in zip(keys, types, strict=True):
            if _skipped(key) or (ours and key in OUR_KEYS) or kind is type(None):
                continue
            kinds.setdefault(key, set()).add(kind)
    return {key: _SCALAR_TYPES.get(next(iter(types))) if len(types) == 1 else None for key, types in kinds.items()}


def _piece(key: str, value: pl.Expr) -> pl.Expr:
    head = orjson.dumps(key).decode() + ":"
    return pl.when(value.is_not_null()).then(pl.lit(head) + value)


def _json_of(value: pl.Expr) -> pl.Expr:
    return pl.struct(v=value).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")


def extras_column(df: pl.DataFrame, data: bytes, piece_bytes: list[int] | None = None) -> pl.Series:
    """The `extra` JSON text of each row of a parsed chunk (null when there is nothing extra).

    A chunk read as several pieces (`piece_bytes`: their sizes; `df["piece"]`: each row's) gets what each piece alone
    would: the keys are found per piece, and consecutive pieces with the same keys are done in one pass.
    """
    if piece_bytes is None or len(piece_bytes) == 1:
        return _column(df, data, discover(df["raw"]), [(df.height, len(data))])
    rows = [0] * len(piece_bytes)
    for piece, n in df.group_by("piece").len().iter_rows():
        rows[piece] = n
    found, at = [], 0
    for n in rows:
        found.append(list(discover(df["raw"].slice(at, n)).items()) if n else [])
        at += n
    parts, row, byte, first = [], 0, 0, 0
    for i in range(1, len(rows) + 1):
        if i < len(rows) and found[i] == found[first]:
            continue
        spans = list(zip(rows[first:i], piece_bytes[first:i], strict=True))
        n, size = sum(rows[first:i]), sum(piece_bytes[first:i])
        whole = first == 0 and i == len(rows)
        parts.append(_column(df if whole else df.slice(row, n), data if whole else data[byte : byte + size], dict(found[first]), spans))
        row, byte, first = row + n, byte + size, i
    return pl.concat(parts)


def _column(df: pl.DataFrame, data: bytes, keys: dict[str, pl.DataType | None], spans: list[tuple[int, int]]) -> pl.Series:
    """extras_column of rows whose pieces have the same `keys`; `spans` are the pieces' (rows, bytes)."""
    if not keys:
        return pl.Series("extra", [None] * df.height, dtype=pl.String)
    typed_keys = {k: t for k, t in keys.items() if t is not None}
    typed = pl.DataFrame()
    if typed_keys:
        try:
            typed = pl.read_ndjson(io.BytesIO(data), schema=typed_keys)
        except pl.exceptions.PolarsError:
            if len(spans) > 1:  # the pieces one by one, as each would be alone: only the failing ones fall back
                parts, row, byte = [], 0, 0
                for n, size in spans:
                    parts.append(_column(df.slice(row, n), data[byte : byte + size], keys, [(n, size)]))
                    row, byte = row + n, byte + size
                return pl.concat(parts)
            typed_keys = {}  # a later row has another type: cut every key out as JSON instead
    ours = df["schema_version"].is_not_null()
    pieces: list[pl.Expr] = []
    frame = df.select("raw").with_columns(ours=ours)
    for key in keys:
        if key in typed_keys:
            frame = frame.with_columns(typed[key].alias(f"_x{len(pieces)}"))
            column = pl.col(f"_x{len(pieces)}")
            value = pl.when(column.is_not_null()).then(_json_of(column))
        else:
            value = pl.col("raw").str.json_path_match(_path(key))
            value = pl.when(value != "null").then(value)
        if key in OUR_KEYS:
            value = pl.when(~pl.col("ours")).then(value)
        pieces.append(_piece(key, value))
    body = pl.concat_str(pieces, separator=",", ignore_nulls=True)
    out = frame.lazy().select(extra=pl.when(body != "").then(pl.lit("{") + body + pl.lit("}"))).collect()
    return out["extra"]


def _path(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"$['{escaped}']"


def loads_extra(text: str | None) -> dict[str, Any]:
    return {} if text is None else orjson.loads(text)

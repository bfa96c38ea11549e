"""The `extra` column: a row's other top-level keys (verifier metadata and verifier fields) as one JSON object.

Kept for every row: what the rules read is excluded (`responses_create_params`, `response`, `reward`, the indices,
`rollout_id`, `finish_reason`), and so are NeMo Gym's own bookkeeping keys (`_ng_*`, `ng_*`: markers, trajectories,
perf records). On our own rows (with `schema_version`) our bookkeeping is excluded too; on any other row `status`,
`error`, `attempts`... are the producer's fields and are kept. A key whose value is null is left out.

Cost: the key names come from a sample of each chunk's rows, parsed in Python (a key on none of ~1,000 sampled rows
of a 64 MB chunk is not carried). Values are exact (valid JSON, equal in value and type to what orjson reads):
strings, integers and booleans come typed from read_ndjson in one pass; any other value is cut out of the line with
`json_path_match`, which unquotes a string and rounds some floats, so the line says whether the value is a string
(`"key":"`), the floats are checked against read_ndjson's, and a row that cannot be told apart (a key of two types in
one line, a string key holding another type, a key spelled with escapes, a float json_path_match got wrong) is made
in Python from the line itself.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Collection
from typing import Any

import orjson
import polars as pl

RULE_KEYS = frozenset(
    {
        "responses_create_params",
        "response",
        "reward",
        "_ng_task_index",
        "_ng_rollout_index",
        "rollout_id",
        "finish_reason",
    }
)
OUR_KEYS = frozenset({"status", "error", "attempts", "timings", "schema_version", "sampling", "_session"})
SAMPLE_HEAD = 500
SAMPLE_SPREAD = 500

_SCALAR_TYPES: dict[type, pl.DataType] = {str: pl.String(), int: pl.Int64(), bool: pl.Boolean()}
# A key is found in the line by its plain spelling, unless the line spells one with an escape (`"\u0061nswer":`):
# only an escaped ASCII character can spell a printable ASCII key without `"`, `/` or `\` otherwise.
_PLAIN_KEY = re.compile(r"[ !#-.0-\[\]-~]+")
_ESCAPED_KEY = r'\\u00[0-7][0-9a-fA-F][^"]*"\s*:'
_FLOATY = r"\d[.eE]"


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


def piece_keys(df: pl.DataFrame, pieces: int) -> list[list[tuple[str, pl.DataType | None]]]:
    """`discover` of each piece's rows (`df["piece"]`: each row's piece, rows in piece order)."""
    if pieces == 1:
        return [list(discover(df["raw"]).items())]
    rows = [0] * pieces
    for piece, n in df.group_by("piece").len().iter_rows():
        rows[piece] = n
    found, at = [], 0
    for n in rows:
        found.append(list(discover(df["raw"].slice(at, n)).items()) if n else [])
        at += n
    return found


def shared_scalars(found: list[list[tuple[str, pl.DataType | None]]], taken: Collection[str]) -> dict[str, pl.DataType]:
    """The scalar extra keys the chunk's own typed read can take along (saving the extras pass a read of every line):
    those of every piece when all pieces have the same keys, but not a key the typed read reads itself."""
    if any(keys != found[0] for keys in found):
        return {}
    return {key: dtype for key, dtype in found[0] if dtype is not None and key not in taken}


def extras_column(
    df: pl.DataFrame,
    data: bytes,
    piece_bytes: list[int] | None = None,
    found: list[list[tuple[str, pl.DataType | None]]] | None = None,
    read: pl.DataFrame | None = None,
) -> pl.Series:
    """The `extra` JSON text of each row of a parsed chunk (null when there is nothing extra).

    A chunk read as several pieces (`piece_bytes`: their sizes; `df["piece"]`: each row's) gets what each piece alone
    would: the keys are found per piece (`found`, when the caller has them: `piece_keys`), and consecutive pieces with
    the same keys are done in one pass. `read`: the `shared_scalars` keys, already read typed from `data`.
    """
    piece_bytes = piece_bytes or [len(data)]
    found = found if found is not None else piece_keys(df, len(piece_bytes))
    rows = [0] * len(piece_bytes)
    if len(rows) == 1:
        rows[0] = df.height
    else:
        for piece, n in df.group_by("piece").len().iter_rows():
            rows[piece] = n
    parts, row, byte, first = [], 0, 0, 0
    for i in range(1, len(rows) + 1):
        if i < len(rows) and found[i] == found[first]:
            continue
        spans = list(zip(rows[first:i], piece_bytes[first:i], strict=True))
        n, size = sum(rows[first:i]), sum(piece_bytes[first:i])
        whole = first == 0 and i == len(rows)
        parts.append(
            _column(
                df if whole else df.slice(row, n),
                data if whole else data[byte : byte + size],
                dict(found[first]),
                spans,
                read if whole else None,
            )
        )
        row, byte, first = row + n, byte + size, i
    return pl.concat(parts)


def _column(
    df: pl.DataFrame,
    data: bytes,
    keys: dict[str, pl.DataType | None],
    spans: list[tuple[int, int]],
    given: pl.DataFrame | None = None,
) -> pl.Series:
    """extras_column of rows whose pieces have the same `keys`; `spans` are the pieces' (rows, bytes); `given`: keys
    read typed already."""
    if not keys:
        return pl.Series("extra", [None] * df.height, dtype=pl.String)
    names = list(keys)
    frame = df.select("raw").with_columns(
        ours=df["schema_version"].is_not_null(), escaped=pl.col("raw").str.contains(_ESCAPED_KEY)
    )
    frame = _with_cuts(frame, names, [k for k, t in keys.items() if t is None])
    # The String read that checks a cut value's numbers rides along with the typed read, for the keys that have any
    floaty = [k for i, (k, t) in enumerate(keys.items()) if t is None and frame[f"_c{i}"].str.contains(_FLOATY).any()]
    schema = {k: t for k, t in keys.items() if t is not None} | dict.fromkeys(floaty, pl.String())
    try:
        if given is not None and schema and all(given.schema.get(k) == t for k, t in schema.items()):
            typed = given.select(list(schema))
        else:
            typed = pl.read_ndjson(io.BytesIO(data), schema=schema) if schema else pl.DataFrame()
    except pl.exceptions.PolarsError:
        if len(spans) > 1:  # the pieces one by one, as each would be alone: only the failing ones fall back
            parts, row, byte = [], 0, 0
            for n, size in spans:
                parts.append(_column(df.slice(row, n), data[byte : byte + size], keys, [(n, size)]))
                row, byte = row + n, byte + size
            return pl.concat(parts)
        # A later row has another type (an integer key holds a string): read every key as text and check it.
        frame = _with_cuts(frame, names, [k for k, t in keys.items() if t not in (None, pl.String())])
        keys = {k: t if t == pl.String() else None for k, t in keys.items()}
        try:
            typed = pl.read_ndjson(io.BytesIO(data), schema=dict.fromkeys(keys, pl.String()))
        except pl.exceptions.PolarsError:  # a value polars cannot read at all (1e400): every row in Python
            return _exact_rows(df, keys, pl.Series([True] * df.height))
    frame = frame.with_columns(typed.rename({k: f"_x{names.index(k)}" for k in typed.columns}))
    pieces, suspects = [], []
    for i, (key, dtype) in enumerate(keys.items()):
        read = pl.col(f"_x{i}") if key in typed.columns else None
        value, suspect = _value(key, dtype, read, pl.col(f"_c{i}") if dtype is None else None)
        if key in OUR_KEYS:
            value, suspect = pl.when(~pl.col("ours")).then(value), suspect & ~pl.col("ours")
        pieces.append(_piece(key, value))
        suspects.append(suspect)
    body = pl.concat_str(pieces, separator=",", ignore_nulls=True)
    out = (
        frame.lazy()
        .select(extra=pl.when(body != "").then(pl.lit("{") + body + pl.lit("}")), suspect=pl.any_horizontal(suspects))
        .collect()
    )
    return _exact_rows(df, keys, out["suspect"], out["extra"])


def _with_cuts(frame: pl.DataFrame, names: list[str], keys: list[str]) -> pl.DataFrame:
    cuts = {f"_c{names.index(k)}": pl.col("raw").str.json_path_match(_path(k)) for k in keys}
    return frame.lazy().with_columns(**cuts).collect() if cuts else frame


def _value(key: str, dtype: pl.DataType | None, read: pl.Expr | None, cut: pl.Expr | None) -> tuple[pl.Expr, pl.Expr]:
    """A key's JSON text on each row, and whether the row must be read in Python to know it exactly.

    `read` is the key read by read_ndjson: Int64/Boolean (strict: it failed otherwise), else String, which is exact
    for a string but turns any other value into text. `cut` (json_path_match) gives the other values as compact JSON,
    a string unquoted, and parses numbers with serde's fast float path: ~10% of random doubles come back one ulp off,
    often as a shorter number (2.0000000000000002e-19 -> 2e-19). So a cut with a float in it is checked against the
    String read's numbers, which are exact. Whether a value is a string is seen in the line: `"key":"` is there or not.
    """
    spelled = pl.col("escaped") if _PLAIN_KEY.fullmatch(key) else pl.lit(True)  # else: spelled we cannot know how
    name = "".join("\\" + ch if ch in r"\.+*?()|[]{}^$#&-~" else ch for ch in key)
    other = pl.col("raw").str.contains(rf'"{name}"\s*:\s*[{{\[\-0-9tf]') | spelled  # a value that is not a string
    if read is not None and dtype is not None:
        value: pl.Expr = pl.when(read.is_not_null()).then(_json_of(read))
        return value, (read.is_not_null() & other) if dtype == pl.String() else pl.lit(False)
    assert cut is not None
    string = pl.col("raw").str.contains(rf'"{name}"\s*:\s*"') | spelled
    value = pl.when(~string).then(cut).when(~other & cut.is_not_null()).then(_json_of(cut))
    floats = cut.str.contains(_FLOATY).fill_null(False)
    if read is None:
        return value, (string & other) | (~string & floats)
    numbers_differ = floats & (_numbers(cut) != _numbers(read)).fill_null(True)
    return value, (string & other) | (~string & numbers_differ) | (cut.is_null() != read.is_null())


def _numbers(text: pl.Expr) -> pl.Expr:
    return text.str.extract_all(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?").list.eval(pl.element().cast(pl.Float64))


def _exact_rows(
    df: pl.DataFrame, keys: dict[str, pl.DataType | None], suspect: pl.Series, extra: pl.Series | None = None
) -> pl.Series:
    """`extra` with the `suspect` rows (all, without `extra`) made in Python from the line itself."""
    rows = suspect.fill_null(True).arg_true()
    texts = []
    for raw, ours in zip(df["raw"].gather(rows), df["schema_version"].gather(rows).is_not_null(), strict=True):
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:  # an integer past 64 bits: json reads it
            row = json.loads(raw)
        found = {k: row[k] for k in keys if row.get(k) is not None and not (ours and k in OUR_KEYS)}
        texts.append(json.dumps(found, ensure_ascii=False, separators=(",", ":")) if found else None)
    if extra is None:
        return pl.Series("extra", texts, dtype=pl.String)
    return extra.scatter(rows, texts) if texts else extra


def _path(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"$['{escaped}']"


def loads_extra(text: str | None) -> dict[str, Any]:
    return {} if text is None else orjson.loads(text)

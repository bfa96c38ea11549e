"""Find rollout inputs (runs, NeMo Gym output folders, JSONL/Parquet files, globs; local or fsspec) and load them.

Sources and groups: a run directory is one source (its rollouts/ and failures/ shards together); a NeMo Gym output
`<stem>.jsonl` is one with its `<stem>_failures.jsonl` (failed rollouts of the same groups), and its
`<stem>_materialized_inputs.jsonl` holds the inputs (one row per rollout owed), read as inputs, not as rollouts. Any
other file is its own source. A group is (source, `_ng_task_index`), or (source, sha1 of the prompt) without one.
Sources are named portably (`portable_names`): ids never hold a local absolute path.
"""

from __future__ import annotations

import functools
import glob
import io
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fsspec
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError, StorageError
from ..storage import filesystem
from .discover import InputFile, discover, display
from .frame import ROLLOUT_SCHEMA, Piece, empty_frame, parse_chunk, parse_pieces
from .validate import BadRows, locate_bad_lines

CHUNK_BYTES = 64 << 20
# Small files of one source are parsed together up to this many bytes: ~40 of a collection run's 256-row shards,
# with the fixed cost per chunk (~25-50 ms) paid per batch, not per shard. At 1M rollouts the load's peak RSS was
# 289 MB with 16 MB batches and 629 MB with 64 MB ones (bench/filter_run.py run, CPU time the same).
BATCH_BYTES = 16 << 20
PARQUET_ROWS = 50_000
# A selection is joined to the frame this many frame rows at a time (`LoadedRollouts.joined`).
JOIN_ROWS = 500_000
# Batches parsed at once, each in its own thread (polars releases the GIL while it parses): one batch's
# single-threaded steps (a column's JSON path match, the Python of the extras pass) overlap the next one's, and the
# main thread reads files and writes Parquet parts meanwhile. Results are taken in input order.
PARSERS = 2


class LoadedRollouts(BaseModel):
    """The loaded frame (a Parquet directory when loaded with a workdir, else in memory) and what loading found."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    inputs: list[str]
    files: int
    rows_read: int  # lines with content, bad ones included
    rows: int  # rows in the frame
    bad_rows: BadRows
    has_token_ids: bool
    input_rows: int = 0  # rows of NeMo Gym materialized inputs read (one per rollout owed)
    missing_rollouts: int = 0  # owed rollouts (in the materialized inputs) with neither a rollout nor a failure row
    frame_uri: str | None = None
    frame_data: pl.DataFrame | None = Field(default=None, exclude=True, repr=False)

    def scan(self, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None) -> pl.LazyFrame:
        """The frame as a LazyFrame with ROLLOUT_SCHEMA (or the requested columns)."""
        if self.frame_data is not None:
            lf = self.frame_data.lazy()
        elif self.frame_uri is None:
            lf = empty_frame().lazy()
        else:
            lf = scan_parquet_dir(self.frame_uri, columns, storage_options)
        return lf.select(columns) if columns else lf

    def _local_dir(self, storage_options: dict[str, Any] | None) -> str | None:
        """The local directory of the frame's Parquet parts; None for a frame in memory or on object storage (read
        through `scan`, which reads a remote frame's parts itself)."""
        if self.frame_uri is None or self.frame_data is not None:
            return None
        fs, path = filesystem(self.frame_uri, storage_options)
        return path if display(fs, path) == path else None

    def rows_of(
        self, rows: pl.Series, columns: list[str], storage_options: dict[str, Any] | None = None
    ) -> pl.DataFrame:
        """`columns` of the frame rows numbered `rows` (in frame order), reading only the Parquet parts that hold
        them: a writer fetches the text of a batch of selected rows at a time, never of the whole selection."""
        wanted = pl.col("row").is_in(rows.implode())
        path = self._local_dir(storage_options)
        if path is None:
            return self.scan(None, storage_options).filter(wanted).select(columns).collect()
        starts, parts = _part_starts(path)
        at = (starts.search_sorted(rows, side="right") - 1).unique().sort().to_list()
        if not at:
            return empty_frame().select(columns)
        return pl.scan_parquet([parts[i] for i in at]).filter(wanted).select(columns).collect()

    def joined(
        self, selected: pl.DataFrame, columns: list[str], storage_options: dict[str, Any] | None = None
    ) -> pl.LazyFrame:
        """The frame's `columns` (`row` among them) of the rows in `selected`, with selected's other columns, in frame
        order. A local frame is joined JOIN_ROWS frame rows at a time, each range of its parts with the selected rows
        in it: the join's table holds one range's rows, not the whole selection's (at 10M rollouts RL keeps ~10M
        rows: 1.3 GB over the selection in one join, 0.5 GB by ranges). `selected` must be sorted by row."""

        def join(frame: pl.LazyFrame, rows: pl.DataFrame) -> pl.LazyFrame:
            return frame.join(rows.lazy(), on="row", how="inner", maintain_order="left")

        path = self._local_dir(storage_options)
        if path is None or not selected["row"].is_sorted():
            return join(self.scan(columns, storage_options), selected)
        starts, parts = _part_starts(path)
        ranges, at = [], 0
        while at < len(parts):
            end = int(starts.search_sorted(starts[at] + JOIN_ROWS, side="left"))
            end = max(end, at + 1)
            first, past = starts[at], starts[end] if end < len(parts) else None
            lo = selected["row"].search_sorted(first, side="left")
            hi = selected.height if past is None else selected["row"].search_sorted(past, side="left")
            ranges.append(join(pl.scan_parquet(parts[at:end]).select(columns), selected.slice(lo, hi - lo)))
            at = end
        return pl.concat(ranges) if ranges else join(self.scan(columns, storage_options), selected)


@functools.lru_cache(maxsize=8)
def _part_starts(path: str) -> tuple[pl.Series, list[str]]:
    """The first frame row of each Parquet part of a local frame directory (parts hold consecutive rows, in order)."""
    parts = sorted(glob.glob(f"{path}/*.parquet"))
    heights = [pl.scan_parquet(part).select(pl.len()).collect().item() for part in parts]
    return pl.Series([0, *heights[:-1]], dtype=pl.Int64).cum_sum(), parts


def iter_jsonl_chunks(fs: fsspec.AbstractFileSystem, path: str, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(first line number, bytes of whole lines) blocks of a possibly compressed JSONL file."""
    with fs.open(path, "rb", compression="infer") as f:
        rest = b""
        line = 1
        while block := f.read(chunk_bytes):
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            chunk, rest = data[: cut + 1], data[cut + 1 :]
            yield line, chunk
            line += chunk.count(b"\n")
        if rest.strip():
            yield line, rest + b"\n"


def iter_parquet_chunks(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[tuple[int, bytes]]:
    """Rollout rows stored as Parquet, re-serialised to NDJSON blocks; 'line' is the 1-based row number."""
    if display(fs, path) == path:  # local: stream slices
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        slices = (
            pl.scan_parquet(path).slice(offset, PARQUET_ROWS).collect() for offset in range(0, rows, PARQUET_ROWS)
        )
    else:
        with fs.open(path, "rb") as f:
            table = pl.read_parquet(f)
        slices = (table.slice(offset, PARQUET_ROWS) for offset in range(0, table.height, PARQUET_ROWS))
    offset = 1
    for part in slices:
        yield offset, part.write_ndjson().encode()
        offset += part.height


def parse_or_locate(pieces: list[Piece], source: str, bad: BadRows, skip: bool) -> pl.DataFrame:
    """Parse pieces of one source's files together; when polars refuses them, each alone, and in a refused piece find
    the bad lines in Python and parse the rest. Bad rows are counted (skip) or the first one in file order raises an
    InputError naming file and line."""
    rejected: list[tuple[int, int, str, str]] = []  # (piece, line, reason, detail)
    try:
        parsed = parse_pieces(pieces, source=source)
    except (pl.exceptions.PolarsError, UnicodeDecodeError):
        if len(pieces) > 1:
            return pl.concat([parse_or_locate([piece], source, bad, skip) for piece in pieces])
        piece = pieces[0]
        texts, invalid_utf8 = _split_lines(piece.data, piece.first_line)
        good, invalid = locate_bad_lines(texts)
        parsed, refused = parse_good_lines(good, piece, source)
        rejected = [(0, *r) for r in invalid_utf8 + invalid + refused]
    problems = parsed.filter(pl.col("problem").is_not_null())
    if problems.height:
        order = {
            p.file: i for i, p in reversed(list(enumerate(pieces)))
        }  # a file's first piece: its place in file order
        rejected += [
            (order[file], line, "unknown status" if p.startswith("unknown status") else p, p)
            for file, line, p in problems.select("file", "line", "problem").iter_rows()
        ]
    if rejected and not skip:
        piece_at, line, _, detail = min(rejected)
        raise _row_error(pieces[piece_at].file, line, detail)
    for piece_at, line, reason, detail in sorted(rejected):
        bad.add(pieces[piece_at].file, line, reason, detail)
    return parsed.filter(pl.col("problem").is_null())


def parse_good_lines(
    good: list[tuple[int, str]], piece: Piece, source: str
) -> tuple[pl.DataFrame, list[tuple[int, str, str]]]:
    """The lines the Python checks passed, parsed; a line polars still refuses is isolated by halving and becomes a
    bad row with its line (never a failure of the whole range)."""
    if not good:
        return empty_frame().with_columns(problem=pl.lit(None, pl.String)), []
    body = "\n".join(text for _, text in good).encode() + b"\n"
    lines = pl.DataFrame(
        {"line": [n for n, _ in good], "raw": [t for _, t in good]}, schema={"line": pl.Int64, "raw": pl.String}
    )
    try:
        return parse_chunk(body, lines, source=source, file=piece.file), []
    except pl.exceptions.PolarsError as exc:
        if len(good) == 1:
            reason = str(exc).strip().splitlines()[0][:200]
            return empty_frame().with_columns(problem=pl.lit(None, pl.String)), [
                (good[0][0], "cannot parse", f"cannot parse ({reason})")
            ]
    half = len(good) // 2
    first, first_refused = parse_good_lines(good[:half], piece, source)
    rest, rest_refused = parse_good_lines(good[half:], piece, source)
    return pl.concat([first, rest]), first_refused + rest_refused


def _split_lines(data: bytes, first_line: int) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """Non-blank (line, text) pairs, and the lines that are not UTF-8 as rejects."""
    out: list[tuple[int, str]] = []
    rejected: list[tuple[int, str, str]] = []
    for i, raw in enumerate(data.split(b"\n")):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejected.append((first_line + i, "not UTF-8", f"not valid UTF-8 at byte {exc.start}"))
            continue
        if text.strip():
            out.append((first_line + i, text))
    return out, rejected


def _row_error(file: str, line: int, reason: str) -> InputError:
    return InputError(
        f"{file}:{line}: {reason} (fix the row, or skip and count bad rows with --skip-bad-rows / skip_bad_rows=True)",
        file=file,
        line=line,
    )


def scan_parquet_dir(uri: str, columns: list[str] | None, storage_options: dict[str, Any] | None) -> pl.LazyFrame:
    fs, path = filesystem(uri, storage_options)
    parts = sorted(fs.glob(f"{path}/*.parquet"))
    if not parts:
        return empty_frame().lazy()
    if display(fs, path) == path:
        return pl.scan_parquet(parts)
    frames = []
    for part in parts:
        with fs.open(part, "rb") as f:
            frames.append(pl.read_parquet(f, columns=columns))
    return pl.concat(frames).lazy()


class FrameSink:
    """Collects parsed chunks: Parquet parts under `<workdir>/frame-<id>/` (bounded memory), or in memory."""

    def __init__(self, workdir: str | None, storage_options: dict[str, Any] | None, *, keep_keys: bool = True) -> None:
        self.parts: list[pl.DataFrame] = []
        self.rows = 0
        # (source, task, rollout) of every row, for the owed-rollout count: kept only when some input owes rollouts
        self.keep_keys = keep_keys
        self.keys: list[pl.DataFrame] = []
        self.has_token_ids = False
        self.uri: str | None = None
        if workdir is not None:
            self.fs, base = filesystem(workdir, storage_options)
            self.dir = f"{base.rstrip('/')}/frame-{uuid.uuid4().hex[:8]}"
            self.fs.makedirs(self.dir, exist_ok=True)
            self.uri = f"{workdir.rstrip('/')}/{self.dir.rsplit('/', 1)[1]}"

    def add(self, part: pl.DataFrame) -> None:
        if part.height == 0:
            return
        part = part.select(list(ROLLOUT_SCHEMA)).with_columns(
            row=pl.int_range(self.rows, self.rows + part.height, dtype=pl.Int64)
        )
        self.has_token_ids = self.has_token_ids or part["generation_token_ids"].null_count() < part.height
        if self.keep_keys:
            self.keys.append(part.select(_KEYS))
        if self.uri is None:
            self.parts.append(part)
        else:
            with self.fs.open(f"{self.dir}/part-{len(self.parts):05d}.parquet", "wb") as f:
                part.write_parquet(f, compression="lz4")
            self.parts.append(part.clear())
        self.rows += part.height

    def frame(self) -> pl.DataFrame | None:
        if self.uri is not None:
            return None
        return pl.concat(self.parts) if self.parts else empty_frame()


_KEYS = ["source", "task_index", "rollout_index"]
_INPUT_SCHEMA = {"_ng_task_index": pl.Int64(), "_ng_rollout_index": pl.Int64()}


def read_input_keys(item: InputFile, chunk_bytes: int) -> pl.DataFrame:
    """(source, task_index, rollout_index) of a materialized-inputs file: the rollouts its run owes."""
    parts = []
    for _, data in iter_jsonl_chunks(item.fs, item.path, chunk_bytes):
        try:
            keys = pl.read_ndjson(io.BytesIO(data), schema=_INPUT_SCHEMA)
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{item.url}: cannot read the materialized inputs ({exc})") from None
        parts.append(keys.rename({"_ng_task_index": "task_index", "_ng_rollout_index": "rollout_index"}))
    keys = pl.concat(parts) if parts else pl.DataFrame(schema={"task_index": pl.Int64, "rollout_index": pl.Int64})
    return keys.select(source=pl.lit(item.source), task_index="task_index", rollout_index="rollout_index")


def load_rollouts(
    inputs: list[str],
    *,
    storage_options: dict[str, Any] | None = None,
    skip_bad_rows: bool = False,
    workdir: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> LoadedRollouts:
    """Read every input into the rollout frame. With `workdir`, the frame is written there as Parquet parts and the
    result is small enough to pass between Prefect tasks."""
    files = discover(inputs, storage_options)
    bad = BadRows()
    sink = FrameSink(workdir, storage_options, keep_keys=any(item.role == "inputs" for item in files))
    rows_read = 0
    owed: list[pl.DataFrame] = []
    batch: list[Piece] = []
    batch_source, batch_bytes = "", 0
    parsing: deque[tuple[Future[pl.DataFrame], BadRows]] = deque()

    def take() -> None:
        """Add the oldest batch in parse to the frame (its bad rows after those of the batches before it)."""
        nonlocal rows_read, bad
        future, found = parsing.popleft()
        part = future.result()
        rows_read += part.height + found.count
        bad = bad.merge(found)
        sink.add(part)

    def flush() -> None:
        nonlocal batch, batch_bytes
        batch_bytes = 0
        if not batch:
            return
        found = BadRows()
        parsing.append((pool.submit(parse_or_locate, batch, batch_source, found, skip_bad_rows), found))
        batch = []
        while len(parsing) > PARSERS:
            take()

    with ThreadPoolExecutor(PARSERS, thread_name_prefix="rollouts-parse") as pool:
        try:
            for item in files:
                fs = item.fs
                try:
                    if item.role == "inputs":
                        owed.append(read_input_keys(item, chunk_bytes))
                        continue
                    chunks = (
                        iter_parquet_chunks(fs, item.path)
                        if item.parquet
                        else iter_jsonl_chunks(fs, item.path, chunk_bytes)
                    )
                    for first_line, data in chunks:
                        # Small files of one source (a run's 256-row shards) are parsed together, up to BATCH_BYTES
                        limit = min(chunk_bytes, BATCH_BYTES)
                        if batch and (item.source != batch_source or batch_bytes + len(data) > limit):
                            flush()
                        batch.append(Piece(item.url, first_line, data))
                        batch_source, batch_bytes = item.source, batch_bytes + len(data)
                except OSError as exc:
                    raise StorageError(f"{item.url}: cannot read ({exc})") from exc
            flush()
            while parsing:
                take()
        except OSError as exc:  # writing a frame part
            raise StorageError(f"{sink.uri or inputs[0]}: cannot write the frame ({exc})") from exc
        finally:
            pool.shutdown(cancel_futures=True)
    if rows_read == 0:
        raise InputError(f"no rollout rows in {', '.join(inputs)}")
    inputs_frame = pl.concat(owed) if owed else None
    missing = 0
    if inputs_frame is not None and inputs_frame.height:
        seen = (
            pl.concat(sink.keys)
            if sink.keys
            else pl.DataFrame(schema=dict.fromkeys(_KEYS, pl.Int64)).with_columns(source=pl.lit("", pl.String))
        )
        missing = inputs_frame.unique().join(seen.unique(), on=_KEYS, how="anti", nulls_equal=True).height
    return LoadedRollouts(
        inputs=list(inputs),
        files=len(files),
        rows_read=rows_read,
        rows=sink.rows,
        bad_rows=bad,
        has_token_ids=sink.has_token_ids,
        input_rows=0 if inputs_frame is None else inputs_frame.height,
        missing_rollouts=missing,
        frame_uri=sink.uri,
        frame_data=sink.frame(),
    )

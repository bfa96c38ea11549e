"""Read rollouts for the health checks: a run folder, a NeMo Gym output folder or a rollouts JSONL, chunk by chunk.

- A run folder (`rollouts/` inside): its `rollouts/*.jsonl` shards, one source named after the folder. Failed
  rollouts (`failures/`) are not read: they have nothing to check.
- A NeMo Gym output folder: every `<stem>.jsonl`, each its own source `<stem>`; `<stem>_failures.jsonl` and
  `<stem>_materialized_inputs.jsonl` are not rollouts to check.
- A file (`.jsonl`, `.jsonl.gz`...; local or any fsspec URL): one source, named after the file without extensions.
Files are read in blocks of whole lines; small files of one source are batched up to `chunk_bytes` so each chunk
pays polars' fixed costs once. `RolloutReader.chunks()` yields check frames (frame.FRAME_SCHEMA) one chunk at a
time, so memory is bounded by the chunk and never by the run.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import orjson
import polars as pl

from ..process.readers import iter_jsonl_chunks
from .frame import ROW_DTYPE, decode, decode_python, empty_frame, flatten, split_decoded
from .typed import decode_block

# Below glibc's largest mmap threshold (32 MB): once the first block is freed, later blocks of this size come from
# the heap and reuse its pages instead of being mapped and faulted in afresh. 24 MB blocks took 7.2-7.9 CPU-s per
# 100k rollouts of 3.8 KB where 32 MB blocks took 8.5 (16 MB: 8.1, 12 MB: 7.9; more, smaller chunks cost polars more).
CHUNK_BYTES = 24 << 20
ROLLOUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")
NOT_ROLLOUTS = ("_failures", "_materialized_inputs")
BAD_EXAMPLES = 20
_LINES_SCHEMA = {"file": pl.String(), "line": pl.Int64(), "raw": pl.String()}
# (file as shown, first line number, bytes of whole lines, where they are in a local uncompressed file: path, offset
# and length). Read with `keep_bytes`, a block has its bytes and no place; without it, a block of a local
# uncompressed file has its place and no bytes (a worker process reads them back: `with_bytes`), any other its bytes.
Block = tuple[str, int, bytes, tuple[str, int, int] | None]


def line_blocks(path: str, chunk_bytes: int) -> Iterator[tuple[int, int, int]]:
    """(first line number, offset, length) of the blocks of whole lines `iter_jsonl_chunks` cuts a plain local file
    into, without keeping their bytes: one buffer is read into and scanned for newlines (no copy of a block), about
    a third of the CPU of building each block's bytes. A last line without its newline counts one byte more, as the
    newline `iter_jsonl_chunks` adds to it (`with_bytes` adds it back)."""
    buffer = bytearray(chunk_bytes)
    carry, offset, line = 0, 0, 1  # carry: bytes of an unfinished line at the buffer's start
    with open(path, "rb", buffering=0) as handle:
        while True:
            if len(buffer) < carry + chunk_bytes:  # a line longer than a chunk: read on past it, as the reader does
                buffer.extend(bytes(carry + chunk_bytes - len(buffer)))
            with memoryview(buffer) as view:
                got = handle.readinto(view[carry : carry + chunk_bytes])
            if not got:
                break
            end = carry + got
            cut = buffer.rfind(b"\n", 0, end) + 1
            if cut:
                yield line, offset, cut
                line += buffer.count(b"\n", 0, cut)
                offset += cut
                buffer[: end - cut] = buffer[cut:end]
            carry = end - cut
    if buffer[:carry].strip():
        yield line, offset, carry + 1


@dataclass(frozen=True)
class InputFile:
    url: str  # as shown in messages and in the verdicts' `file`
    path: str  # path for the filesystem
    source: str


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for suffix in ROLLOUT_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def discover(
    path: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, list[InputFile]]:
    """The rollout files under `path` (see the module docstring); raises FileNotFoundError when there are none."""
    fs, root = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")

    def url(p: str) -> str:
        return p if local else f"{protocol}://{p}"

    root = root.rstrip("/") or root
    if fs.isdir(root):
        if fs.isdir(f"{root}/rollouts"):
            source = _stem(root)
            shards = sorted(p for p in fs.glob(f"{root}/rollouts/*") if p.endswith(ROLLOUT_SUFFIXES))
            return fs, [InputFile(url(p), p, source) for p in shards]
        files = sorted(
            p for p in fs.glob(f"{root}/*") if p.endswith(ROLLOUT_SUFFIXES) and not _stem(p).endswith(NOT_ROLLOUTS)
        )
        if not files:
            raise FileNotFoundError(f"{path}: neither a run folder (rollouts/) nor a folder of rollout JSONL files")
        return fs, [InputFile(url(p), p, _stem(p)) for p in files]
    if not fs.exists(root):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return fs, [InputFile(url(root), root, _stem(root))]


def read_lines(file: str, first_line: int, data: bytes) -> tuple[pl.DataFrame, list[tuple[str, int, str]]]:
    """The non-blank lines of `data` (file, line, raw), and the lines that are not UTF-8 as bad rows."""
    try:
        raw = pl.read_csv(
            io.BytesIO(data), has_header=False, separator="\x1f", quote_char=None, schema={"raw": pl.String()}
        )
        if raw.height == data.count(b"\n"):
            lines = raw.with_row_index("line", offset=first_line).select(
                file=pl.lit(file, pl.String), line=pl.col("line").cast(pl.Int64), raw="raw"
            )
            return lines.filter(pl.col("raw").is_not_null() & (pl.col("raw").str.strip_chars() != "")), []
    except pl.exceptions.PolarsError:
        pass
    rows: list[tuple[str, int, str]] = []
    bad: list[tuple[str, int, str]] = []
    for at, piece in enumerate(data.split(b"\n")[:-1]):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((file, first_line + at, f"not UTF-8 at byte {exc.start}"))
            continue
        if text.strip():
            rows.append((file, first_line + at, text))
    return pl.DataFrame(rows, schema=_LINES_SCHEMA, orient="row"), bad


class ToolLists:
    """Each row's tool list as exact JSON ([{"name", "parameters"}, ...]), for the rows that call tools.

    Only rows with a function call need their tools: their `responses_create_params.tools` (else `response.tools`)
    is cut from the raw line with `json_path_match` (exact JSON, every schema detail kept, so rows whose tool lists
    differ in one enum are told apart), and each distinct list is reduced to names and parameters once."""

    def __init__(self) -> None:
        self.known: dict[str, str | None] = {}
        self.known_raw: dict[bytes, str | None] = {}

    def of_text(self, text: bytes) -> str | None:
        """The `tools` value of a tool list given as its JSON text (the fast decoder's path)."""
        if text not in self.known_raw:
            self.known_raw[text] = _tool_specs(text)
        return self.known_raw[text]

    def column(self, decoded: pl.DataFrame) -> pl.Series:
        output = pl.col("doc").struct.field("response").struct.field("output")
        calls = output.list.eval(pl.element().struct.field("type") == "function_call").list.any().fill_null(False)
        at = decoded.select(calls=calls)["calls"].arg_true()
        tools = pl.Series("tools", [None] * decoded.height, dtype=pl.String)
        if at.len() == 0:
            return tools
        rows = decoded[at].select("raw")
        found = _path(rows, "$.responses_create_params.tools")
        missing = (found.is_null() | (found == "[]")).arg_true()
        if missing.len():  # rows that declare no tools of their own: the response's list, if any
            found = found.scatter(missing, _path(rows[missing], "$.response.tools"))
        for text in found.drop_nulls().unique().to_list():
            if text not in self.known:
                self.known[text] = _tool_specs(text)
        return tools.scatter(at, found.replace_strict(self.known, default=None, return_dtype=pl.String))


def _path(rows: pl.DataFrame, path: str) -> pl.Series:
    return rows.lazy().select(pl.col("raw").str.json_path_match(path)).collect()["raw"]


def _tool_specs(text: str | bytes) -> str | None:
    """A tool list (Responses or Chat Completions shape) as JSON [{"name", "parameters"}], or None when empty."""
    try:
        tools = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    out = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        spec: dict[str, Any] = function if isinstance(function, dict) else tool
        name = spec.get("name") or tool.get("type")
        if isinstance(name, str):
            out.append({"name": name, "parameters": spec.get("parameters")})
    return orjson.dumps(out).decode() if out else None


@dataclass
class RolloutReader:
    """Check frames of every rollout under `path`, one chunk at a time; counts lines and bad rows as it goes."""

    path: str
    storage_options: Mapping[str, Any] | None = None
    chunk_bytes: int = CHUNK_BYTES
    lines: int = 0
    bad_rows: int = 0
    bad_examples: list[tuple[str, int, str]] = field(default_factory=list)
    files: list[InputFile] = field(default_factory=list)
    tools: ToolLists = field(default_factory=ToolLists)

    def blocks(self, keep_bytes: bool = True) -> Iterator[tuple[list[Block], str]]:
        """The input as chunks of whole-line blocks (file, first line, bytes) of one source each, up to
        `chunk_bytes`: what `frame_of_blocks` turns into a check frame. Without `keep_bytes`, the blocks of plain
        local files come with their place only (`line_blocks`), for worker processes that read them back."""
        fs, self.files = discover(self.path, self.storage_options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        pending: list[Block] = []
        source, size = "", 0
        for item in self.files:
            plain = protocol in ("file", "local") and fsspec.utils.infer_compression(item.path) is None
            for block in self._file_blocks(fs, item.path, item.url, plain and not keep_bytes):
                length = len(block[2]) or (block[3] or ("", 0, 0))[2]  # its bytes, or the length of its place
                if pending and (item.source != source or size + length > self.chunk_bytes):
                    yield pending, source
                    pending, size = [], 0
                pending.append(block)
                source, size = item.source, size + length
        if pending:
            yield pending, source

    def _file_blocks(self, fs: fsspec.AbstractFileSystem, path: str, url: str, places: bool) -> Iterator[Block]:
        if places:
            for first_line, offset, length in line_blocks(path, self.chunk_bytes):
                yield url, first_line, b"", (path, offset, length)
            return
        for first_line, data in iter_jsonl_chunks(fs, path, self.chunk_bytes):
            yield url, first_line, data, None

    def chunks(self) -> Iterator[pl.DataFrame]:
        for blocks, source in self.blocks():
            yield self.frame_of_blocks(blocks, source)

    def _bad(self, bad: list[tuple[str, int, str]]) -> None:
        self.note_bad(bad, len(bad))

    def note_bad(self, examples: list[tuple[str, int, str]], count: int) -> None:
        """Count `count` bad rows and keep the first BAD_EXAMPLES examples (file, line, reason) of the run."""
        self.bad_rows += count
        self.bad_examples.extend(examples[: max(0, BAD_EXAMPLES - len(self.bad_examples))])

    def frame_of_blocks(self, blocks: list[Block], source: str) -> pl.DataFrame:
        """The check frame of blocks of whole lines (file, first line, bytes): the typed decoder, else polars."""
        blocks = [with_bytes(block) for block in blocks]
        files: list[str] = []
        numbers: list[int] = []
        for url, first_line, data, _ in blocks:
            count = data.count(b"\n")
            files += [url] * count
            numbers += range(first_line, first_line + count)
        parts = decode_block(b"".join(block[2] for block in blocks), files, numbers, self.tools.of_text)
        if parts is not None:
            self.lines += parts[0].height
            return flatten(*parts, source) if parts[0].height else empty_frame()
        pieces = []
        for url, first_line, data, _ in blocks:
            lines, bad = read_lines(url, first_line, data)
            self._bad(bad)
            pieces.append(lines)
        lines = pl.concat(pieces)
        self.lines += lines.height
        return frame_of_lines(lines, source, self.tools, self._bad)


def with_bytes(block: Block) -> Block:
    """`block` with its bytes read back from its place when it came without them (`RolloutReader.blocks`)."""
    url, first_line, data, place = block
    if data or place is None:
        return block
    path, offset, length = place
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) == length - 1 and not data.endswith(b"\n"):  # the file's last line, without its newline
        data += b"\n"
    if len(data) != length or not data.endswith(b"\n"):
        raise OSError(f"{url}: changed while it was being checked")
    return url, first_line, data, place


BadRows = Callable[[list[tuple[str, int, str]]], None]
PYTHON_BLOCK = 256  # lines polars refuses are isolated down to blocks of this many, decoded row by row


def decode_tolerant(lines: pl.DataFrame, on_bad: BadRows | None = None) -> pl.DataFrame:
    """`decode`, and where polars refuses a block, its halves, down to PYTHON_BLOCK lines decoded row by row: a few
    odd rows cost a few small blocks of Python, not the chunk."""
    try:
        return decode(lines)
    except pl.exceptions.PolarsError:
        if lines.height > PYTHON_BLOCK:
            half = lines.height // 2
            return pl.concat([decode_tolerant(lines[:half], on_bad), decode_tolerant(lines[half:], on_bad)])
    decoded, bad = decode_python(lines)
    if on_bad is not None:
        on_bad(bad)
    return decoded


def frame_of_lines(
    lines: pl.DataFrame, source: str, tools: ToolLists | None = None, on_bad: BadRows | None = None
) -> pl.DataFrame:
    """The check frame of (file, line, raw) lines; rows polars refuses are decoded one by one (bad ones reported
    to `on_bad` as (file, line, reason) and left out)."""
    tools = tools or ToolLists()
    if lines.height == 0:
        return empty_frame()
    data = ("\n".join(lines["raw"]) + "\n").encode()
    parts = decode_block(data, lines["file"].to_list(), lines["line"].to_list(), tools.of_text)
    if parts is None:
        decoded = decode_tolerant(lines, on_bad)
        if decoded.height == 0:
            return empty_frame()
        parts = split_decoded(decoded, tools.column(decoded))
    return flatten(*parts, source)


def frame_of_rows(rows: Iterable[Mapping[str, Any]], source: str = "rows") -> pl.DataFrame:
    """The check frame of rollout rows given as dicts (tests, and callers that already hold rows)."""
    texts = [orjson.dumps(row).decode() for row in rows]
    lines = pl.DataFrame(
        {"file": [None] * len(texts), "line": list(range(1, len(texts) + 1)), "raw": texts}, schema=_LINES_SCHEMA
    )
    return frame_of_lines(lines, source)


def load_frame(path: str, storage_options: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The whole check frame of `path` in memory (small runs, tests); `RolloutReader` streams large ones."""
    parts = list(RolloutReader(path, storage_options).chunks())
    return pl.concat(parts) if parts else empty_frame()


__all__ = ["ROW_DTYPE", "InputFile", "RolloutReader", "discover", "frame_of_lines", "frame_of_rows", "load_frame"]

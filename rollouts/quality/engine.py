"""Run the registered checks over a run and decide each rollout's verdict.

    result = check_path("runs/my-run", QualityConfig())       # a run folder, a NeMo Gym output folder, a JSONL
    result = check_run(rows_or_frame, QualityConfig())         # rollout dicts, or a check frame already built
    result.unhealthy_fraction, result.verdicts(), result.summary(), result.unhealthy(["runaway_generation"])

Rollout checks run on each chunk of the check frame; only the columns group checks need (frame.KEPT_COLUMNS) and
each check's `fired_<id>` / `evidence_<id>` survive the chunk. Run checks then run once on that table.

Verdicts: `unhealthy` when any check fired; otherwise `unobserved` when a check that could judge some rollouts of
this run could not judge this one (its data is missing from this row); otherwise `healthy`. A check that could judge
no rollout at all (no token ids anywhere, groups of one) says nothing about any row: it is listed as inactive in the
summary instead of turning every verdict into `unobserved`. Failed rollouts are not checked, only counted.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from .config import HEALTHY, UNHEALTHY, UNOBSERVED, QualityConfig
from .frame import FRAME_SCHEMA, KEPT_COLUMNS
from .loader import Block, RolloutReader, frame_of_rows
from .registry import Check, evidence_col, fired_col, is_builtin, registered, selected_checks
from .summary import build_summary


def _owned(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with every string copied into buffers of its own. A sliced string (the completion preview) can be a
    view that keeps the whole text buffer it was cut from alive: in isolation, 30 chunks of 100-character slices of
    3 KB strings held 2.7 GB as views and 0.35 GB as copies. Kept columns outlive their chunk, so they are copied."""
    return frame.with_columns(pl.col(pl.String) + pl.lit(""))


def check_chunk(frame: pl.DataFrame, checks: Sequence[Check], config: QualityConfig) -> pl.DataFrame:
    """Every rollout check on one chunk of the check frame (failed rollouts left out): KEPT_COLUMNS + results."""
    rows = frame.filter(~pl.col("failed"))
    parts = [rows.select(KEPT_COLUMNS)]
    for check in checks:
        if check.scope == "rollout":
            out = check.run(rows, config)
            parts.append(out.rename({"fired": fired_col(check.id), "evidence": evidence_col(check.id)}))
    return _owned(pl.concat(parts, how="horizontal"))


@dataclass(frozen=True)
class QualityResult:
    """Verdicts of one run: `table` has one row per checked rollout (KEPT_COLUMNS, `fired_<id>`, `evidence_<id>`,
    `verdict`, `checks`); the counts describe what was read."""

    table: pl.DataFrame
    checks: tuple[str, ...]  # ids of the checks that ran, in order
    config: QualityConfig
    failed: int = 0  # failed rollouts seen (not checked)
    lines: int = 0  # rows read, failed ones included
    bad_rows: int = 0  # lines that are not JSON objects (left out)
    bad_examples: tuple[tuple[str, int, str], ...] = ()
    inputs: tuple[str, ...] = ()
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def checked(self) -> int:
        return self.table.height

    def count(self, verdict: str) -> int:
        return int((self.table["verdict"] == verdict).sum())

    @property
    def unhealthy_fraction(self) -> float:
        """Unhealthy rollouts over checked ones (0 when nothing was checked): the run-completed event's payload."""
        return self.count(UNHEALTHY) / self.checked if self.checked else 0.0

    def fired(self, check_id: str) -> int:
        return int(self.table[fired_col(check_id)].fill_null(False).sum())

    def top_checks(self, n: int = 3) -> list[tuple[str, int]]:
        """The `n` checks that fired most, with their counts (for a failure reason)."""
        counts = [(check_id, self.fired(check_id)) for check_id in self.checks]
        return sorted((c for c in counts if c[1]), key=lambda c: -c[1])[:n]

    def unhealthy(self, checks: Sequence[str] | None = None) -> pl.DataFrame:
        """Keys (rollout_id, source, task_index, rollout_index) of the rollouts that any of `checks` (default: all
        that ran) fired on: what a filter drops."""
        wanted = list(self.checks if checks is None else checks)
        unknown = [c for c in wanted if c not in self.checks]
        if unknown:
            raise KeyError(f"checks {unknown} did not run; ran: {', '.join(self.checks)}")
        if not wanted:
            return self.table.select("rollout_id", "source", "task_index", "rollout_index").clear()
        hit = pl.any_horizontal([pl.col(fired_col(c)).fill_null(False) for c in wanted])
        return self.table.filter(hit).select("rollout_id", "source", "task_index", "rollout_index")

    def verdicts(self, at: pl.Series | None = None) -> pl.DataFrame:
        """One row per checked rollout (or per row index in `at`): rollout_id, _ng_task_index, _ng_rollout_index,
        verdict, checks (ids that fired), evidence (a JSON object: check id -> evidence), plus env, source, file and
        line."""
        pieces = [
            pl.when(pl.col(fired_col(c)).fill_null(False)).then(
                pl.lit(f'"{c}":')
                + pl.struct(e=pl.col(evidence_col(c)).fill_null(""))
                .struct.json_encode()
                .str.slice(5)
                .str.strip_suffix("}")
            )
            for c in self.checks
        ]
        evidence = (
            pl.lit("{")
            + (pl.concat_list(pieces).list.drop_nulls().list.join(",") if pieces else pl.lit(""))
            + pl.lit("}")
        )
        table = self.table if at is None else self.table[at]
        return table.select(
            "rollout_id",
            _ng_task_index="task_index",
            _ng_rollout_index="rollout_index",
            verdict="verdict",
            checks="checks",
            evidence=_where_fired(table, evidence, "{}", pl.String()),
            env="env",
            source="source",
            file="file",
            line="line",
        )

    def summary(self) -> dict[str, Any]:
        return build_summary(self)


def _where_fired(table: pl.DataFrame, value: pl.Expr, otherwise: Any, dtype: pl.DataType) -> pl.Series:
    """`value` on the rows where a check fired, `otherwise` on the rest: computed on those rows only (a tenth of a
    run or less, where building lists and JSON for every row took most of the verdicts' time)."""
    fired = [name for name in table.columns if name.startswith("fired_")]
    hit = table.select(pl.any_horizontal([pl.col(n).fill_null(False) for n in fired]) if fired else pl.lit(False))
    hit_rows = hit.to_series().alias("hit")
    if table.height == 0 or not hit_rows.any():
        return pl.repeat(otherwise, table.height, dtype=dtype, eager=True)
    values = table.filter(hit_rows).select(value.cast(dtype)).to_series()
    values = values.extend(pl.Series([otherwise], dtype=dtype))  # the last: every other row's
    at = pl.select(pl.when(hit_rows).then(hit_rows.cum_sum() - 1).otherwise(values.len() - 1)).to_series()
    return values.gather(at)


def _verdicts(table: pl.DataFrame, checks: Sequence[str]) -> pl.DataFrame:
    fired = [pl.col(fired_col(c)).fill_null(False) for c in checks]
    active = [c for c in checks if table[fired_col(c)].null_count() < table.height]
    unobserved = [pl.col(fired_col(c)).is_null() for c in active]
    any_fired = pl.any_horizontal(fired) if fired else pl.lit(False)
    any_unobserved = pl.any_horizontal(unobserved) if unobserved else pl.lit(False)
    verdict = (
        pl.when(any_fired)
        .then(pl.lit(UNHEALTHY))
        .when(any_unobserved)
        .then(pl.lit(UNOBSERVED))
        .otherwise(pl.lit(HEALTHY))
    )
    names = [pl.when(f).then(pl.lit(c)) for f, c in zip(fired, checks, strict=True)]
    listed = pl.concat_list(names).list.drop_nulls() if names else pl.lit([], dtype=pl.List(pl.String))
    return table.with_columns(verdict=verdict, checks=_where_fired(table, listed, [], pl.List(pl.String())))


def _empty_table(checks: Sequence[Check]) -> pl.DataFrame:
    schema = {name: FRAME_SCHEMA[name] for name in KEPT_COLUMNS}
    for check in checks:
        schema |= {fired_col(check.id): pl.Boolean(), evidence_col(check.id): pl.String()}
    return pl.DataFrame(schema=schema)


def finish(parts: Iterable[pl.DataFrame], config: QualityConfig, **counts: Any) -> QualityResult:
    """Run checks on the rollout-check results of every chunk, then verdicts: the QualityResult of a run."""
    checks = selected_checks(config)
    rollout = [c for c in checks if c.scope == "rollout"]
    chunks = [p for p in parts if p.height]
    table = pl.concat(chunks, how="vertical_relaxed") if chunks else _empty_table(rollout)
    base = table  # every run check sees the rollout checks' results only
    for check in checks:
        if check.scope == "run":
            out = check.run(base, config)
            table = table.with_columns(
                out["fired"].alias(fired_col(check.id)), out["evidence"].alias(evidence_col(check.id))
            )
    ids = [c.id for c in rollout] + [c.id for c in checks if c.scope == "run"]
    return QualityResult(
        table=_verdicts(table, ids),
        checks=tuple(ids),
        config=config,
        descriptions={c.id: c.description for c in checks},
        **counts,
    )


def prefetched(frames: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """`frames`, the next one built in a thread while the caller checks the current one: decoding is Python (it
    holds the GIL) and checking is mostly polars (it lets go of it), so the two overlap on two cores. At most one
    frame waits; a caller that stops early stops the thread."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for frame in frames:
                if not put(("frame", frame)):
                    return
        except BaseException as exc:  # handed to the caller, raised there
            put(("error", exc))
            return
        put(("end", None))

    thread = threading.Thread(target=produce, name="rollouts-quality-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _checked(frames: Iterator[pl.DataFrame], config: QualityConfig, failed: list[int]) -> Iterator[pl.DataFrame]:
    checks = selected_checks(config)
    for frame in frames:
        failed[0] += int(frame["failed"].sum())
        yield check_chunk(frame, checks, config)


def check_run(
    frame_or_rows: pl.DataFrame | Iterable[Mapping[str, Any]],
    config: QualityConfig | None = None,
    *,
    source: str = "rows",
) -> QualityResult:
    """Check a run held in memory: a check frame (frame.FRAME_SCHEMA, e.g. from `load_frame`) or rollout rows as
    dicts (ours or NeMo Gym's; `source` names their group scope)."""
    config = config or QualityConfig()
    if isinstance(frame_or_rows, pl.DataFrame):
        missing = [name for name in FRAME_SCHEMA if name not in frame_or_rows.columns]
        if missing:
            raise ValueError(f"not a check frame: missing columns {missing} (pass rows as dicts instead)")
        frame = frame_or_rows
    else:
        frame = frame_of_rows(frame_or_rows, source)
    failed = [0]
    parts = list(_checked(iter([frame]), config, failed))
    return finish(parts, config, failed=failed[0], lines=frame.height)


# Inputs smaller than this many chunks are checked in this process: starting a worker (a fresh interpreter that
# imports polars) costs about what checking a chunk does.
PROCESS_MIN_CHUNKS = 4


def default_workers() -> int:
    """Processes `rollouts check` uses: one per core, up to 4 (each holds a chunk and polars' pools, ~0.5 GB)."""
    return max(1, min(os.cpu_count() or 1, 4))


def check_path(
    path: str,
    config: QualityConfig | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_bytes: int | None = None,
    workers: int = 1,
) -> QualityResult:
    """Check every rollout under `path` (a run folder, a NeMo Gym output folder or a rollouts JSONL), streaming.
    With `workers` > 1, chunks are decoded and checked by that many worker processes (spawned, so safe beside
    polars' threads) when the input spans PROCESS_MIN_CHUNKS chunks or more and every selected check is one of
    this package's (a check registered at run time exists in this process only)."""
    config = config or QualityConfig()
    reader = RolloutReader(path, storage_options)
    if chunk_bytes:
        reader.chunk_bytes = chunk_bytes
    failed = [0]
    checks = selected_checks(config)
    if workers > 1 and all(is_builtin(c) for c in checks):
        parts = list(_checked_in_processes(reader, config, tuple(c.id for c in checks), workers, failed))
    else:
        parts = list(_checked(prefetched(reader.chunks()), config, failed))
    return finish(
        parts,
        config,
        failed=failed[0],
        lines=reader.lines,
        bad_rows=reader.bad_rows,
        bad_examples=tuple(reader.bad_examples),
        inputs=tuple(f.url for f in reader.files),
    )


ChunkResult = tuple[pl.DataFrame, int, int, list[tuple[str, int, str]], int]
_WORKER_READER: RolloutReader | None = None  # a worker process's reader: its tool lists are kept across chunks


def check_blocks(blocks: list[Block], source: str, config: QualityConfig, check_ids: tuple[str, ...]) -> ChunkResult:
    """A worker process's share: one chunk's rollout-check results (the checks `check_ids`, built-in ones), with
    its rows read, bad rows (count and first examples) and failed rollouts. Blocks of local files come without
    their bytes and are read here (`loader.with_bytes`): handing 24 MB through a pipe costs more."""
    global _WORKER_READER
    reader = _WORKER_READER = _WORKER_READER or RolloutReader("")
    reader.lines, reader.bad_rows, reader.bad_examples = 0, 0, []
    frame = reader.frame_of_blocks(blocks, source)
    by_id = {c.id: c for c in registered()}
    table = check_chunk(frame, [by_id[i] for i in check_ids], config)
    return table, reader.lines, reader.bad_rows, reader.bad_examples, int(frame["failed"].sum())


def _checked_in_processes(
    reader: RolloutReader, config: QualityConfig, check_ids: tuple[str, ...], workers: int, failed: list[int]
) -> Iterator[pl.DataFrame]:
    """The rollout-check results of every chunk, in input order, from `workers` processes (at most two chunks per
    worker in flight); the first chunks are checked here while fewer than PROCESS_MIN_CHUNKS have been read."""
    chunks = reader.blocks(keep_bytes=False)  # places only: the workers read their blocks
    head = list(itertools.islice(chunks, PROCESS_MIN_CHUNKS))
    if len(head) < PROCESS_MIN_CHUNKS:
        yield from _checked((reader.frame_of_blocks(b, s) for b, s in head), config, failed)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: collections.deque[Future[ChunkResult]] = collections.deque()
        for blocks, source in itertools.chain(head, chunks):
            pending.append(pool.submit(check_blocks, blocks, source, config, check_ids))
            while len(pending) > 2 * workers:
                yield _merged(pending.popleft().result(), reader, failed)
        while pending:
            yield _merged(pending.popleft().result(), reader, failed)


def _merged(result: ChunkResult, reader: RolloutReader, failed: list[int]) -> pl.DataFrame:
    table, lines, bad_rows, bad_examples, failed_here = result
    reader.lines += lines
    reader.note_bad(bad_examples, bad_rows)
    failed[0] += failed_here
    return table

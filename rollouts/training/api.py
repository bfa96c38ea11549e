"""Entry points of the filter and format stages: load_rollouts, select, write_outputs, and process (all three).

The objects passed between stages are small: with a `workdir`, the loaded frame and each selection live there as
Parquet and only their URIs, counts and the data card travel (cheap as Prefect task arguments and results).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from rollouts.errors import ConfigError, StorageError
from rollouts.process.card import DataCard, Drop
from rollouts.process.config import Objective, ProcessConfig
from rollouts.process.dpo import select_dpo
from rollouts.process.readers import LoadedRollouts, load_rollouts
from rollouts.process.rl import select_rl
from rollouts.process.sft import select_sft
from rollouts.process.writers import write_card, write_dpo, write_rl, write_sft
from rollouts.quality import check_path, flagged, read_verdicts, require_known_checks
from rollouts.storage import filesystem
from rollouts.tokens.api import write_token_records

SELECTORS = {"rl": select_rl, "sft": select_sft, "dpo": select_dpo}


class Selection(BaseModel):
    """The filter stage's result: kept rows (RL, SFT) or pairs (DPO) by frame row, and the data card so far."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    objective: Objective
    loaded: LoadedRollouts
    card: DataCard
    selected_uri: str | None = None
    selected_data: pl.DataFrame | None = Field(default=None, exclude=True, repr=False)

    def selected(self, storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
        if self.selected_data is not None:
            return self.selected_data
        if self.selected_uri is None:
            raise StorageError("selection has neither data nor a URI")
        fs, path = filesystem(self.selected_uri, storage_options)
        try:
            with fs.open(path, "rb") as f:
                return pl.read_parquet(f)
        except OSError as exc:
            raise StorageError(f"{self.selected_uri}: cannot read selection ({exc})") from exc


class ProcessResult(BaseModel):
    """What the format stage wrote: one file per format, plus the data card as JSON and markdown."""

    objective: Objective
    out_dir: str
    files: dict[str, str]  # format -> URL
    rows: dict[str, int]  # format -> rows written
    card_json: str
    card_markdown: str
    card: DataCard


def select(
    loaded: LoadedRollouts,
    config: ProcessConfig,
    *,
    workdir: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Selection:
    """Filter stage: apply the objective's rules and build the data card; with `workdir`, store the result there."""
    card = DataCard(
        objective=config.objective,
        inputs=loaded.inputs,
        config=config.model_dump(mode="json"),
        rows_read=loaded.rows_read,
        bad_rows=loaded.bad_rows.model_copy(deep=True),
    )
    if loaded.missing_rollouts:
        card.notes.append(
            f"{loaded.missing_rollouts} of {loaded.input_rows} rollouts owed by the materialized inputs "
            "have no row at all (killed or never dispatched)"
        )
    rows = loaded.scan(None, storage_options)
    unhealthy, checked_here = 0, False
    if config.drop_unhealthy:
        rows, unhealthy, checked_here = drop_unhealthy(rows, loaded.inputs, config.drop_unhealthy, storage_options)
    selected = SELECTORS[config.objective](rows, config, card)
    if unhealthy:
        checks = "any check" if config.drop_unhealthy == ["all"] else ", ".join(config.drop_unhealthy)
        where = "checked here; `rollouts check` writes the verdicts" if checked_here else "see quality/verdicts.jsonl"
        why = f"the rollout health checks found it unhealthy ({checks}; {where})"
        card.dropped.insert(0, Drop(rule="unhealthy", count=unhealthy, why=why))
    if workdir is None:
        return Selection(objective=config.objective, loaded=loaded, card=card, selected_data=selected)
    uri = f"{workdir.rstrip('/')}/selection-{config.objective}-{uuid.uuid4().hex[:8]}.parquet"
    fs, path = filesystem(uri, storage_options)
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            selected.write_parquet(f)
    except OSError as exc:
        raise StorageError(f"{uri}: cannot write selection ({exc})") from exc
    return Selection(objective=config.objective, loaded=loaded, card=card, selected_uri=uri)


def write_outputs(
    selection: Selection,
    config: ProcessConfig,
    out: str,
    *,
    storage_options: dict[str, Any] | None = None,
) -> ProcessResult:
    """Format stage: write `<out>/<objective>/<format file>` for every format, and data_card.json / data_card.md."""
    if config.objective != selection.objective:
        raise ConfigError(f"selection is for {selection.objective}, config for {config.objective}")
    out_dir = f"{out.rstrip('/')}/{config.objective}"
    fs, path = filesystem(out_dir, storage_options)
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{out_dir}: cannot create output directory ({exc})") from exc
    card = selection.card.model_copy(deep=True)
    selected = selection.selected(storage_options)
    so = storage_options
    if config.objective == "rl":
        card.outputs = write_rl(selected, selection.loaded, config, out_dir, so)
        if "tokens" in config.output_formats:
            tokens = write_token_records(selected, selection.loaded, f"{out_dir}/tokens", config.on_break, so)
            card.outputs += tokens.card.outputs
    elif config.objective == "sft":
        card.outputs = write_sft(selected, selection.loaded, config, out_dir, so, card)
    else:
        card.outputs = write_dpo(selected, selection.loaded, config, out_dir, so, card)
    card_json, card_md = write_card(card, out_dir, "data_card", so)
    return ProcessResult(
        objective=config.objective,
        out_dir=out_dir,
        files={o.format: o.path for o in card.outputs},
        rows={o.format: o.rows for o in card.outputs},
        card_json=card_json,
        card_markdown=card_md,
        card=card,
    )


def process_many(
    inputs: Sequence[str],
    configs: Sequence[ProcessConfig],
    out: str,
    *,
    storage_options: dict[str, Any] | None = None,
    workdir: str | None = None,
) -> list[ProcessResult]:
    """Load once, then select and write every objective. Without `workdir` the frame goes to a local temp dir."""
    if not configs:
        raise ConfigError("no objective given")
    objectives = [c.objective for c in configs]
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"objective listed twice: {objectives}")
    skip = any(c.skip_bad_rows for c in configs)
    with tempfile.TemporaryDirectory(prefix="rollouts-process-") as tmp:
        work = workdir or tmp
        loaded = load_rollouts(list(inputs), storage_options=storage_options, skip_bad_rows=skip, workdir=work)
        results = []
        for config in configs:
            selection = select(loaded, config, storage_options=storage_options)
            results.append(write_outputs(selection, config, out, storage_options=storage_options))
        return results


def process(
    inputs: Sequence[str],
    config: ProcessConfig,
    out: str,
    *,
    storage_options: dict[str, Any] | None = None,
    workdir: str | None = None,
) -> ProcessResult:
    """load_rollouts + select + write_outputs for one objective."""
    return process_many(inputs, [config], out, storage_options=storage_options, workdir=workdir)[0]


__all__ = [
    "LoadedRollouts",
    "ProcessResult",
    "Selection",
    "load_rollouts",
    "process",
    "process_many",
    "select",
    "write_outputs",
]


def drop_unhealthy(
    rows: pl.LazyFrame, inputs: list[str], checks: list[str], storage_options: dict[str, Any] | None
) -> tuple[pl.LazyFrame, int, bool]:
    """`rows` without the rollouts the health checks flag (any unhealthy one with `["all"]`, else those `checks`
    fired on), how many went, and whether some input had no verdicts and was checked here (a run's own
    `quality/verdicts.jsonl` is used; other inputs are checked, nothing written)."""
    require_known_checks(drop_unhealthy=checks)
    wanted = None if checks == ["all"] else checks
    flagged_ids: list[pl.Series] = []
    checked_here = False
    for place in inputs:
        try:  # a run folder checked by its collection has them; a file or a glob does not
            verdicts = read_verdicts(place, storage_options=storage_options)
        except OSError:
            verdicts = pl.DataFrame()
        if verdicts.is_empty():
            verdicts, checked_here = check_path(place, storage_options=storage_options).verdicts(), True
        flagged_ids.append(flagged(verdicts, wanted)["rollout_id"])
    ids = pl.concat(flagged_ids).drop_nulls().unique() if flagged_ids else pl.Series("rollout_id", [], pl.String)
    gone = pl.DataFrame({"rollout_id": ids.cast(pl.String)})
    before = rows.select(pl.len()).collect().item()
    kept = rows.join(gone.lazy(), on="rollout_id", how="anti")
    return kept, before - kept.select(pl.len()).collect().item(), checked_here

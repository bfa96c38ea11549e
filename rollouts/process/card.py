"""The data card: rows in and out, what each rule dropped and why, reward and pair distributions; JSON and markdown."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from rollouts.report.histogram import histogram

from ..report.markdown import header, row
from .validate import BadRows


class Distribution(BaseModel):
    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    p25: float | None = None
    p50: float | None = None
    p75: float | None = None
    max: float | None = None
    histogram: list[tuple[float, float, int]] = Field(default_factory=list)  # (low, high, count); low == high: a value


def distribution(values: pl.Series) -> Distribution:
    """Summary statistics and a histogram of a numeric series (nulls and NaN ignored)."""
    s = values.cast(pl.Float64).drop_nulls().drop_nans()
    if s.len() == 0:
        return Distribution()
    stats = s.to_frame("v").select(
        mean=pl.col("v").mean(),
        std=pl.col("v").std(),
        min=pl.col("v").min(),
        p25=pl.col("v").quantile(0.25, "nearest"),
        p50=pl.col("v").quantile(0.5, "nearest"),
        p75=pl.col("v").quantile(0.75, "nearest"),
        max=pl.col("v").max(),
    )
    row = {k: (None if v is None else round(float(v), 6)) for k, v in stats.row(0, named=True).items()}
    return Distribution(count=s.len(), histogram=histogram(s), **row)


class Drop(BaseModel):
    rule: str
    count: int
    why: str


class OutputFile(BaseModel):
    format: str
    path: str
    rows: int
    note: str | None = None


class DataCard(BaseModel):
    """What one objective's filter and format stages did. `unit` says what rows_out counts: rollouts or pairs."""

    objective: str
    unit: str = "rollouts"
    inputs: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    rows_read: int = 0
    bad_rows: BadRows = Field(default_factory=BadRows)
    rows_in: int = 0
    rows_out: int = 0
    groups_in: int = 0
    groups_out: int = 0
    dropped: list[Drop] = Field(default_factory=list)  # rows (rollouts), in rule order
    group_drops: list[Drop] = Field(default_factory=list)  # whole groups (prompts)
    pair_drops: list[Drop] = Field(default_factory=list)  # candidate pairs (DPO)
    reward_before: Distribution = Field(default_factory=Distribution)
    reward_after: Distribution = Field(default_factory=Distribution)
    distributions: dict[str, Distribution] = Field(default_factory=dict)  # advantage, margin, pairs_per_prompt...
    notes: list[str] = Field(default_factory=list)
    outputs: list[OutputFile] = Field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"# Data card: {self.objective}", ""]
        lines += [f"Inputs: {', '.join(f'`{i}`' for i in self.inputs)}", ""]
        lines += ["| | count |", "| --- | ---: |"]
        lines += [f"| rows read | {self.rows_read} |", f"| bad rows skipped | {self.bad_rows.count} |"]
        lines += [f"| rollouts in | {self.rows_in} |", f"| groups (prompts) in | {self.groups_in} |"]
        lines += [f"| {self.unit} out | {self.rows_out} |", f"| groups (prompts) out | {self.groups_out} |", ""]
        if self.bad_rows.count:
            lines += ["## Bad rows", "", *header(["reason", "rows"], [False, True])]
            lines += [row([reason, n]) for reason, n in self.bad_rows.by_reason.items()]
            lines += ["", *[f"- `{e}`" for e in self.bad_rows.examples], ""]
        for title, drops, unit in (
            ("Dropped rollouts", self.dropped, "rollouts"),
            ("Dropped groups", self.group_drops, "groups"),
            ("Dropped pairs", self.pair_drops, "pairs"),
        ):
            if drops:
                lines += [f"## {title}", "", *header(["rule", unit, "why"], [False, True, False])]
                lines += [row([d.rule, d.count, d.why]) for d in drops]
                lines.append("")
        dists = {"reward before": self.reward_before, "reward after": self.reward_after, **self.distributions}
        columns = ["", "count", "mean", "std", "min", "p25", "p50", "p75", "max"]
        lines += ["## Distributions", "", *header(columns, [False] + [True] * 8)]
        for name, d in dists.items():
            cells = [d.count, d.mean, d.std, d.min, d.p25, d.p50, d.p75, d.max]
            lines.append(row([name, *(_cell(c) for c in cells)]))
        lines.append("")
        for name, d in dists.items():
            if d.histogram:
                bins = ", ".join(
                    f"{_cell(lo)}: {n}" if lo == hi else f"[{_cell(lo)}, {_cell(hi)}): {n}" for lo, hi, n in d.histogram
                )
                lines.append(f"- {name} histogram: {bins}")
        lines.append("")
        if self.outputs:
            lines += ["## Outputs", "", *header(["format", "file", "rows", "note"], [False, False, True, False])]
            lines += [row([o.format, f"`{o.path}`", o.rows, o.note or ""]) for o in self.outputs]
            lines.append("")
        if self.notes:
            lines += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        options = ", ".join(f"{k}={v}" for k, v in self.config.items())
        lines += ["## Options", "", f"`{options}`", ""]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0: a mean of -0.0 prints as 0
    return str(value)


# Rows of the frame a selection holds at once: a bigger input is selected a bucket of whole groups at a time (a group's
# rules never look at another group), so the selection's memory does not grow with the input. ~0.3-0.7 GB per 1M rows
# held (RL, SFT, DPO), measured with bench/process_throughput.py.
BUCKET_ROWS = 500_000


def group_buckets(frame: pl.LazyFrame) -> list[pl.LazyFrame]:
    """`frame` as one bucket, or as buckets of whole groups (by a hash of `group_id`) of ~BUCKET_ROWS rows each."""
    rows = frame.select(pl.len()).collect().item()
    count = -(-rows // BUCKET_ROWS)
    if count <= 1:
        return [frame]
    bucket = pl.col("group_id").hash(seed=0) % count
    return [frame.filter(bucket == at) for at in range(count)]


def per_bucket(frame: pl.LazyFrame, card: DataCard) -> Iterator[tuple[pl.LazyFrame, DataCard]]:
    """Each bucket of `frame` (`group_buckets`) with a card of its own for the caller to fill its input figures in
    (rows_in, groups_in, reward_before); they are added to `card` after each bucket, and with several buckets the
    reward distribution is taken over the whole frame (quantiles do not add up)."""
    buckets = group_buckets(frame)
    for bucket in buckets:
        part = DataCard(objective=card.objective)
        yield bucket, part
        card.rows_in, card.groups_in = card.rows_in + part.rows_in, card.groups_in + part.groups_in
        card.reward_before = part.reward_before
    if len(buckets) > 1:
        card.reward_before = distribution(_ok_rewards(frame))


def _ok_rewards(frame: pl.LazyFrame) -> pl.Series:
    """The rewards of the successful rollouts, in frame order (the card's reward_before)."""
    return frame.filter(pl.col("status") == "ok").select("reward").collect()["reward"]


def drops_from_counts(counts: dict[str, int], why: dict[str, str]) -> list[Drop]:
    """Drops in the order of `why` (the rule order), leaving out rules that dropped nothing."""
    return [Drop(rule=rule, count=counts[rule], why=text) for rule, text in why.items() if counts.get(rule)]

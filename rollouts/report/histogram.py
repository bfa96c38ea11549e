"""One histogram rule for the run profile and the data cards: few distinct values are counted, the rest binned."""

from __future__ import annotations

import polars as pl

BINS = 10
DISCRETE_VALUES = 12  # at most this many distinct values: count each value instead of binning

Bin = tuple[float, float, int]  # (low, high, count); low == high: one exact value


def histogram(
    values: pl.Series, *, bins: int = BINS, discrete: int = DISCRETE_VALUES, unit_range: bool = False
) -> list[Bin]:
    """Histogram of a numeric series (nulls and NaN ignored).

    With at most `discrete` distinct values each value gets its own (v, v, count) entry, so 0/1 rewards read as
    two counts rather than ten bins with eight empty ones. Otherwise `bins` equal bins span min..max, or 0..1 when
    `unit_range` is set and every value lies in [0, 1] (reward histograms of different runs then line up).
    """
    s = values.cast(pl.Float64).drop_nulls().drop_nans()
    if s.len() == 0:
        return []
    counts = s.value_counts(sort=False).sort(s.name or "")
    if counts.height <= discrete:
        return [(float(v), float(v), int(n)) for v, n in counts.iter_rows()]
    lo, hi = float(s.min()), float(s.max())  # type: ignore[arg-type]
    if unit_range and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    width = (hi - lo) / bins
    index = ((s - lo) / width).floor().clip(0, bins - 1).cast(pl.Int64).value_counts(sort=False)
    by_bin = dict(index.iter_rows())
    return [(round(lo + i * width, 6), round(lo + (i + 1) * width, 6), int(by_bin.get(i, 0))) for i in range(bins)]


def bin_label(low: float, high: float) -> str:
    """`0.5` for an exact value, `[0.2, 0.3)` for a bin."""
    low, high = low + 0.0, high + 0.0  # never "-0"
    return f"{low:.4g}" if low == high else f"[{low:.4g}, {high:.4g})"

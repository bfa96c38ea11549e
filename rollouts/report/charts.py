"""SVG charts of a run profile: throughput over time, the latency CDF and the reward histogram per environment, and
the `rollouts tune` sweep.

Written directly as SVG text (rollouts/report/svg.py), with no plotting library: a chart is a few hundred elements
in fixed margins, and the layout places every label from the estimated width of its text. The margins hold any tick
label because every tick label is at most five characters (`_short`: 1.5k, 20k, 1.2M); tests/unit/test_charts.py
reads each chart back and checks that no text leaves it or overlaps another, and that values land where they should.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollouts.report.svg import ASCENT, DESCENT, Stroke, Svg, fit, text_width

# matplotlib's default colours, so the charts read as they always did.
BLUE, ORANGE, GREEN, RED, PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"
CYCLE = (BLUE, ORANGE, GREEN, RED, PURPLE, "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GRID, GREY = "#e5e5e5", "#808080"
DASHED, DOTTED = "8,4", "2,3"
# Font sizes in px.
TICK, LABEL, TITLE, LEGEND = 12.0, 13.0, 15.0, 11.0
# Margins in px around a plot: a y label and five-character tick labels at the left (and at the right for a twin
# axis), a title or legend at the top, tick labels and an x label at the bottom.
LEFT, RIGHT, TWIN, TOP, BOTTOM = 80.0, 25.0, 85.0, 40.0, 55.0
TICK_LENGTH, GAP = 5.0, 4.0
SAMPLE = 24.0  # a legend entry's line sample
MIN_WINDOWS = 2  # a one-window timeline is one point per line: the report's table says it all


def _short(value: float) -> str:
    """A tick label of at most five characters for the values our axes show (1.5k, 20k, 1.2M, 0.05)."""
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    return "0" if size < 1e-12 else f"{value:.3g}"


@dataclass(frozen=True)
class Scale:
    """Values from `lo` to `hi` onto pixels from `start` to `end`, linear or logarithmic."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        if self.log:
            share = math.log(value / self.lo) / math.log(self.hi / self.lo)
        else:
            share = (value - self.lo) / (self.hi - self.lo)
        return self.start + share * (self.end - self.start)


@dataclass(frozen=True)
class Plot:
    """A plotting area, in px."""

    left: float
    top: float
    right: float
    bottom: float

    def x(self, lo: float, hi: float, log: bool = False) -> Scale:
        return Scale(lo, hi, self.left, self.right, log)

    def y(self, lo: float, hi: float) -> Scale:
        return Scale(lo, hi, self.bottom, self.top)


@dataclass(frozen=True)
class Series:
    """A line (or markers alone, without a stroke); None in `ys` breaks the line. `step`: a step at each midpoint."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    stroke: Stroke | None
    marker: str | None = None
    step: bool = False

    @property
    def color(self) -> str:
        return self.stroke.color if self.stroke else BLUE


def linear_ticks(lo: float, hi: float, integer: bool = False, most: int = 6) -> list[float]:
    """Round values from lo to hi, at most `most` + 1 of them, 1, 2, 2.5 or 5 times a power of ten apart."""
    magnitude = 10 ** math.floor(math.log10((hi - lo) / most))
    steps = [m * magnitude for m in (1, 2, 2.5, 5, 10)]
    fits = (s for s in steps if (hi - lo) / s <= most and (not integer or s >= 1 and s == int(s)))
    step = next(fits, max(1.0, steps[-1]))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[float]]:
    """Major and minor ticks from lo to hi: decades (minor 2 and 5) across more than three decades, else 1-2-5 steps,
    else (within a decade or so) every digit."""

    def at(digits: Sequence[int]) -> list[float]:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        return [v for k in decades for d in digits if lo <= (v := float(f"{d}e{k}")) <= hi]

    if math.log10(hi / lo) > 3:
        return at((1,)), at((2, 5))
    major = at((1, 2, 5))
    return (major, []) if len(major) >= 3 else (at(range(1, 10)), [])


def _padded(lo: float, hi: float, log: bool = False) -> tuple[float, float]:
    """The data range with a 5 % margin at each end (in log space on a log axis)."""
    if log:
        lo_log, hi_log = _padded(math.log10(lo), math.log10(hi))
        return 10**lo_log, 10**hi_log
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    margin = (hi - lo) * 0.05
    return lo - margin, hi + margin


def _points(series: Series, x: Scale, y: Scale) -> list[list[tuple[float, float]]]:
    """The series' runs of points in px, split where a value is missing."""
    runs: list[list[tuple[float, float]]] = [[]]
    for i, (vx, vy) in enumerate(zip(series.xs, series.ys, strict=True)):
        if vy is None or not math.isfinite(vy):
            runs.append([])
            continue
        if series.step:  # from the midpoint before this x to the midpoint after it
            before = (series.xs[i - 1] + vx) / 2 if i else vx
            after = (vx + series.xs[i + 1]) / 2 if i + 1 < len(series.xs) else vx
            runs[-1] += [(x(before), y(vy)), (x(after), y(vy))]
        else:
            runs[-1].append((x(vx), y(vy)))
    return [run for run in runs if run]


def _draw(svg: Svg, series: Sequence[Series], x: Scale, y: Scale) -> None:
    for one in series:
        for run in _points(one, x, y):
            if one.stroke:
                svg.polyline(run, one.stroke)
            if one.marker and not one.step:
                for px, py in run:
                    svg.marker(px, py, one.marker, one.color)


def _x_axis(
    svg: Svg, plot: Plot, ticks: Sequence[tuple[float, str]], x: Scale, label: str | None, minor: Sequence[float] = ()
) -> None:
    """Tick marks below the plot, their labels (a label that would touch the one before it is left out), the label."""
    for value in minor:
        svg.line(x(value), plot.bottom, x(value), plot.bottom + TICK_LENGTH / 2, Stroke("#000000", 0.8))
    free_from = -math.inf  # where the last label drawn ends
    for value, text in ticks:
        px = x(value)
        svg.line(px, plot.bottom, px, plot.bottom + TICK_LENGTH, Stroke("#000000", 0.8))
        if text and px - text_width(text, TICK) / 2 >= free_from + GAP:
            baseline = plot.bottom + TICK_LENGTH + GAP + ASCENT * TICK
            free_from = svg.text(px, baseline, text, TICK, "middle").x1
    if label:
        baseline = plot.bottom + TICK_LENGTH + GAP + (ASCENT + DESCENT) * TICK + GAP + ASCENT * LABEL
        svg.text((plot.left + plot.right) / 2, baseline, label, LABEL, "middle")


def _y_axis(svg: Svg, plot: Plot, y: Scale, ticks: Sequence[float], label: str, right: bool = False) -> None:
    """Tick marks and `_short` labels on one side of the plot, and the axis label (reading upwards) beyond them."""
    edge, sign = (plot.right, 1) if right else (plot.left, -1)
    widest = 0.0
    for value in ticks:
        py = y(value)
        svg.line(edge, py, edge + sign * TICK_LENGTH, py, Stroke("#000000", 0.8))
        text = _short(value)
        widest = max(widest, text_width(text, TICK))
        baseline = py + (ASCENT - DESCENT) / 2 * TICK  # the text box centred on the tick
        svg.text(edge + sign * (TICK_LENGTH + GAP), baseline, text, TICK, "start" if right else "end")
    beyond = edge + sign * (TICK_LENGTH + GAP + widest + GAP)
    x = beyond + ASCENT * LABEL if right else beyond - DESCENT * LABEL
    svg.text(x, (plot.top + plot.bottom) / 2, label, LABEL, "middle", vertical=True)


def _frame(svg: Svg, plot: Plot) -> None:
    svg.rect(plot.left, plot.top, plot.right - plot.left, plot.bottom - plot.top, "none", Stroke("#000000", 0.8))


def _grid(svg: Svg, plot: Plot, xs: Sequence[float] = (), ys: Sequence[float] = ()) -> None:
    """Grid lines at these pixel positions."""
    for px in xs:
        svg.line(px, plot.top, px, plot.bottom, Stroke(GRID, 0.8))
    for py in ys:
        svg.line(plot.left, py, plot.right, py, Stroke(GRID, 0.8))


def _title(svg: Svg, plot: Plot, text: str, size: float = TITLE, centre: bool = False, above: float = GAP) -> None:
    """A title `above` px over the plot, at its left or centred."""
    baseline = plot.top - above - DESCENT * size
    if centre:
        svg.text((plot.left + plot.right) / 2, baseline, text, size, "middle")
    else:
        svg.text(plot.left, baseline, text, size)


def _sample(svg: Svg, x: float, y: float, series: Series) -> None:
    """A legend entry's picture of its series: a stretch of line with the marker in its middle."""
    if series.stroke:
        svg.line(x, y, x + SAMPLE, y, series.stroke)
    if series.marker:
        svg.marker(x + SAMPLE / 2, y, series.marker, series.color)


def _entry_width(series: Series) -> float:
    return SAMPLE + GAP + text_width(series.label, LEGEND)


def _legend_above(svg: Svg, plot: Plot, series: Sequence[Series]) -> None:
    """One row right-aligned above the plot: a legend outside the plot never covers data (nor a twin axis' data)."""
    spacing = 3 * GAP
    x = plot.right - sum(_entry_width(s) for s in series) - spacing * (len(series) - 1)
    baseline = plot.top - GAP - DESCENT * LEGEND
    middle = baseline - (ASCENT - DESCENT) / 2 * LEGEND
    for one in series:
        _sample(svg, x, middle, one)
        svg.text(x + SAMPLE + GAP, baseline, one.label, LEGEND)
        x += _entry_width(one) + spacing


def _legend_inside(svg: Svg, plot: Plot, series: Sequence[Series], corner: str) -> None:
    """One entry a row in a white box in the plot's "upper left" or "lower right" corner."""
    row = (ASCENT + DESCENT) * LEGEND + GAP
    width = GAP + max(_entry_width(s) for s in series) + GAP
    height = GAP + row * len(series)
    left = plot.left + 2 * GAP if corner == "upper left" else plot.right - 2 * GAP - width
    top = plot.top + 2 * GAP if corner == "upper left" else plot.bottom - 2 * GAP - height
    svg.rect(left, top, width, height, "#ffffff", Stroke("#cccccc", 0.8), fill_opacity=0.8)
    for i, one in enumerate(series):
        baseline = top + GAP + i * row + ASCENT * LEGEND
        _sample(svg, left + GAP, baseline - (ASCENT - DESCENT) / 2 * LEGEND, one)
        svg.text(left + GAP + SAMPLE + GAP, baseline, one.label, LEGEND)


def _zero_based(plot: Plot, series: Sequence[Series]) -> Scale:
    """A y scale from 0 to just above the series' largest value."""
    peak = max((v for s in series for v in s.ys if v is not None and math.isfinite(v)), default=0.0)
    return plot.y(0, peak * 1.05 if peak > 0 else 1.0)


def _panel(
    svg: Svg,
    plot: Plot,
    x: Scale,
    left: tuple[str, Sequence[Series], Scale, bool],
    right: tuple[str, Sequence[Series], Scale, bool],
) -> None:
    """A plot with a y axis on each side: (label, series, scale, integer ticks) for each."""
    for (label, series, y, integer), on_right in ((left, False), (right, True)):
        _draw(svg, series, x, y)
        _y_axis(svg, plot, y, linear_ticks(y.lo, y.hi, integer), label, right=on_right)
    _frame(svg, plot)


def throughput_chart(timeline: list[dict[str, Any]]) -> bytes | None:
    """Rollouts/s and output tokens/s above; rollouts in flight, the --parallel limit and errors below."""
    if len(timeline) < MIN_WINDOWS:
        return None
    svg = Svg(800, 500)
    height = (500 - 45 - BOTTOM - 35) / 2
    upper = Plot(LEFT, 45, 800 - TWIN, 45 + height)
    lower = Plot(LEFT, upper.bottom + 35, 800 - TWIN, 500 - BOTTOM)
    t = [row["t_s"] + row["window_s"] / 2 for row in timeline]
    x = upper.x(*_padded(min(t), max(t)))
    ticks = [(v, _short(v)) for v in linear_ticks(x.lo, x.hi)]

    def series(key: str, label: str, stroke: Stroke | None, marker: str | None = None, step: bool = False) -> Series:
        return Series(label, t, [row.get(key) for row in timeline], stroke, marker, step)

    rates = [series("rollouts_per_s", "rollouts/s", Stroke(BLUE), "o")]
    tokens = [series("output_tokens_per_s", "output tokens/s", Stroke(GREEN, opacity=0.6))]
    _panel(
        svg,
        upper,
        x,
        ("rollouts/s", rates, _zero_based(upper, rates), False),
        ("output tokens/s", tokens, _zero_based(upper, tokens), False),
    )
    _x_axis(svg, upper, [(v, "") for v, _ in ticks], x, None)
    _legend_above(svg, upper, rates + tokens)
    _title(svg, upper, "Throughput per window")

    flight = [
        series("in_flight_mean", "in flight (mean)", Stroke(PURPLE)),
        series("in_flight_max", "in flight (max)", Stroke(PURPLE, dash=DASHED, opacity=0.35)),
    ]
    if any(row.get("parallel") is not None for row in timeline):
        flight.append(series("parallel", "--parallel", Stroke("#000000"), step=True))
    errors = [series("errors", "failed rollouts", Stroke(RED, 1.5, DOTTED), "x")]
    most_errors = max(1, *(row["errors"] for row in timeline)) * 1.2
    _panel(
        svg,
        lower,
        x,
        ("rollouts in flight", flight, _zero_based(lower, flight), False),
        ("failed rollouts", errors, lower.y(0, most_errors), True),  # a count: no 0.2 failed rollouts
    )
    _x_axis(svg, lower, ticks, x, "seconds since the first request")
    _legend_above(svg, lower, flight + errors)
    return svg.to_bytes()


def latency_cdf_chart(cdfs: dict[str, list[float]]) -> bytes | None:
    """Fraction of rollouts (or calls) done within x milliseconds, on a log axis."""
    curves = {name: [max(v, 1e-3) for v in values] for name, values in cdfs.items() if values}
    if not curves:
        return None
    svg = Svg(800, 400)
    plot = Plot(LEFT, TOP, 800 - RIGHT, 400 - BOTTOM)
    lo, hi = min(min(v) for v in curves.values()), max(max(v) for v in curves.values())
    x = plot.x(*_padded(lo, hi * 1.001 if hi <= lo else hi, log=True), log=True)
    y = plot.y(0, 1)
    major, minor = log_ticks(x.lo, x.hi)
    fractions = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    _grid(svg, plot, [x(v) for v in major + minor], [y(v) for v in fractions])
    for level in (0.5, 0.99):
        svg.line(plot.left, y(level), plot.right, y(level), Stroke(GREY, 0.7))
    series = [
        Series(name, values, [i / max(1, len(values) - 1) for i in range(len(values))], Stroke(CYCLE[i % len(CYCLE)]))
        for i, (name, values) in enumerate(curves.items())
    ]
    _draw(svg, series, x, y)
    _frame(svg, plot)
    _x_axis(svg, plot, [(v, _short(v)) for v in major], x, "latency (ms, log scale)", minor)
    _y_axis(svg, plot, y, fractions, "fraction done")
    _legend_inside(svg, plot, series, "lower right")
    _title(svg, plot, "Latency CDF", centre=True)
    return svg.to_bytes()


def _reward_cell(svg: Svg, plot: Plot, cell: tuple[float, float], env: str, stats: dict[str, Any]) -> None:
    """One environment's reward histogram: exact values as labelled bars, bins as contiguous bars."""
    bins = stats["histogram"]
    counts = [float(b["count"]) for b in bins]
    y = plot.y(0, max(counts) * 1.05 if max(counts) > 0 else 1.0)
    if all(b["lo"] == b["hi"] for b in bins):
        x = plot.x(-0.6, len(bins) - 0.4)
        spans = [(i - 0.4, i + 0.4) for i in range(len(bins))]
        ticks = [(float(i), f"{b['lo']:g}") for i, b in enumerate(bins)]
        edge = None
    else:
        x = plot.x(*_padded(min(b["lo"] for b in bins), max(b["hi"] for b in bins)))
        spans = [(b["lo"], b["hi"]) for b in bins]
        ticks = [(v, _short(v)) for v in linear_ticks(x.lo, x.hi)]
        edge = Stroke("#ffffff", 1.0)
    for (lo, hi), count in zip(spans, counts, strict=True):
        svg.rect(x(lo), y(count), x(hi) - x(lo), y(0) - y(count), BLUE, edge)
    _frame(svg, plot)
    _x_axis(svg, plot, ticks, x, "reward")
    _y_axis(svg, plot, y, linear_ticks(0, y.hi, integer=True), "rollouts")
    # Centred over the plot and as wide as the cell allows, so clear of the top y tick label, which reaches half its
    # height above the plot.
    centre = (plot.left + plot.right) / 2
    room = 2 * min(centre - cell[0], cell[1] - centre) - 2 * GAP
    title = fit(f"{env}: {stats['count']} rollouts, mean {stats['mean']:.3g}", 12.0, room)
    _title(svg, plot, title, 12.0, centre=True, above=(ASCENT + DESCENT) / 2 * TICK + GAP / 2)


def reward_chart(rewards: dict[str, Any]) -> bytes | None:
    """The reward histogram of each environment, three to a row (400 x 300 px each)."""
    envs = [(env, stats) for env, stats in rewards.items() if stats["histogram"]]
    if not envs:
        return None
    columns = min(3, len(envs))
    rows = math.ceil(len(envs) / columns)
    svg = Svg(400 * columns, 300 * rows)
    for i, (env, stats) in enumerate(envs):
        left, top = 400.0 * (i % columns), 300.0 * (i // columns)
        plot = Plot(left + LEFT, top + 30, left + 400 - RIGHT, top + 300 - BOTTOM)
        _reward_cell(svg, plot, (left, left + 400), env, stats)
    return svg.to_bytes()


def parallel_chart(steps: list[dict[str, Any]], title: str) -> bytes | None:
    """Throughput and latency per --parallel step of a sweep (the `rollouts tune` table)."""
    if not steps:
        return None
    svg = Svg(800, 400)
    plot = Plot(LEFT, TOP, 800 - TWIN, 400 - BOTTOM)
    parallel = [float(row["parallel"]) for row in steps]
    x = plot.x(*_padded(min(parallel), max(parallel) * (2 if len(steps) == 1 else 1), log=True), log=True)
    rates = [Series("requests/s", parallel, [row["throughput"] for row in steps], Stroke(BLUE), "o")]
    latency = [
        Series("p50 ms", parallel, [row["p50_ms"] for row in steps], Stroke(ORANGE, dash=DASHED), "."),
        Series("p95 ms", parallel, [row["p95_ms"] for row in steps], Stroke(RED, dash=DOTTED), "."),
    ]
    y = _zero_based(plot, rates)
    knee = next((row for row in steps if row.get("chosen")), None)
    if knee:
        rates.append(
            Series(f"use {knee['parallel']}", [knee["parallel"]] * 2, [y.lo, y.hi], Stroke(GREEN, 1.5))
        )  # a vertical line over the whole plot
    _panel(
        svg,
        plot,
        x,
        ("successful requests/s", rates, y, False),
        ("latency (ms)", latency, _zero_based(plot, latency), False),
    )
    _x_axis(svg, plot, [(v, str(row["parallel"])) for v, row in zip(parallel, steps, strict=True)], x, "--parallel")
    _legend_inside(svg, plot, rates + latency, "upper left")
    _title(svg, plot, title, centre=True)
    return svg.to_bytes()


def profile_charts(profile: dict[str, Any]) -> dict[str, bytes]:
    """The run's charts by file name; a chart with nothing to show is left out."""
    charts = {
        "throughput.svg": throughput_chart(profile["timeline"]),
        "latency_cdf.svg": latency_cdf_chart(profile["latency_cdf_ms"]),
        "rewards.svg": reward_chart(profile["rewards"]),
    }
    return {name: svg for name, svg in charts.items() if svg}

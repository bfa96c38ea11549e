"""PNG charts of a run profile: throughput over time, the latency CDF and the reward histogram per environment.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state: safe from a worker thread, no display), with
fixed margins instead of a layout engine. A layout engine (constrained or tight) measures every label and, in
`savefig`, draws the whole figure twice, once to size it and once for real: it was ~half of a 10-prompt run's chart
time (bench/report_charts.py). The fixed margins hold any label because every tick label is at most five
characters (`_short`: 1.5k, 20k, 1.2M) and tests/unit/test_charts.py checks that nothing drawn leaves the figure.
matplotlib itself is imported on the first chart, not with this module (~0.45 s, most of it numpy). Importing it in
a thread from the flow's start instead only moved that time: reading prompts and collecting slowed by about what
profiling gained (the import holds the GIL), so the 10-prompt run's total did not drop.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is imported on the first chart (see above)
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
# Margins in inches around the plotting area: room for a y label and five-character tick labels at the left (and at
# the right for a twin axis), a title at the top, tick labels and an x label at the bottom.
LEFT, RIGHT, TWIN, TOP, BOTTOM = 0.8, 0.25, 0.85, 0.4, 0.55
MIN_WINDOWS = 2  # a one-window timeline is one point per line: the report's table says it all


def _short(value: float, _pos: int | None = None) -> str:
    """A tick label of at most five characters for the values our axes show (1.5k, 20k, 1.2M, 0.05)."""
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    return "0" if size < 1e-12 else f"{value:.3g}"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _subplots(
    figure: Figure,
    rows: int = 1,
    columns: int = 1,
    *,
    right: float = RIGHT,
    top: float = TOP,
    row_gap: float = 0.0,
    column_gap: float = 0.0,
    **options: Any,
) -> Any:
    """`figure.subplots` placed by margins and gaps in inches, turned into the fractions GridSpec takes.

    An Axes, or an array of them for a grid: Figure.subplots' own result (typed Any when options are passed on)."""
    width, height = figure.get_size_inches()
    cell_w = (width - LEFT - right - (columns - 1) * column_gap) / columns
    cell_h = (height - top - BOTTOM - (rows - 1) * row_gap) / rows
    grid = {
        "left": LEFT / width,
        "right": 1 - right / width,
        "top": 1 - top / height,
        "bottom": BOTTOM / height,
        "wspace": column_gap / cell_w,
        "hspace": row_gap / cell_h,
    }
    return figure.subplots(rows, columns, gridspec_kw=grid, **options)


def _short_ticks(*axes_list: Axes) -> None:
    from matplotlib.ticker import FuncFormatter

    for axes in axes_list:
        axes.yaxis.set_major_formatter(FuncFormatter(_short))


def _title(axes: Axes, text: str, **options: Any) -> None:
    # An explicit y keeps matplotlib from measuring the axes on every draw to lift the title over top tick labels,
    # which none of these charts has (~55 ms of a 130 ms latency CDF).
    axes.set_title(text, y=1.0, **options)


def _legend_above(axes: Axes, handles: Sequence[Artist]) -> None:
    # Above the plot, in one row: loc="best" only avoids the lines of its own axes, not a twin axis' (it put the
    # in-flight legend over the failed-rollout markers), and a legend outside the plot never covers data.
    axes.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=len(handles),
        fontsize=8,
        frameon=False,
        borderaxespad=0.2,
        handlelength=1.8,
        columnspacing=1.2,
    )


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def throughput_figure(timeline: list[dict[str, Any]]) -> Figure:
    """Rollouts/s and output tokens/s above; rollouts in flight, the --parallel limit and errors below."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 5)
    top, bottom = _subplots(figure, 2, 1, right=TWIN, top=0.45, row_gap=0.35, sharex=True)
    t = [row["t_s"] + row["window_s"] / 2 for row in timeline]
    top.plot(t, [row["rollouts_per_s"] for row in timeline], marker="o", color="tab:blue", label="rollouts/s")
    top.set_ylabel("rollouts/s")
    top.set_ylim(bottom=0)
    tokens = top.twinx()
    tokens.plot(
        t, [row["output_tokens_per_s"] for row in timeline], color="tab:green", alpha=0.6, label="output tokens/s"
    )
    tokens.set_ylabel("output tokens/s")
    tokens.set_ylim(bottom=0)
    _legend_above(top, top.get_lines() + tokens.get_lines())
    _title(top, "Throughput per window", loc="left")
    bottom.plot(t, [row["in_flight_mean"] for row in timeline], color="tab:purple", label="in flight (mean)")
    bottom.plot(
        t,
        [row["in_flight_max"] for row in timeline],
        color="tab:purple",
        alpha=0.35,
        linestyle="--",
        label="in flight (max)",
    )
    if any(row.get("parallel") is not None for row in timeline):
        bottom.step(t, [row.get("parallel") for row in timeline], where="mid", color="black", label="--parallel")
    bottom.set_ylabel("rollouts in flight")
    bottom.set_xlabel("seconds since the first request")
    bottom.set_ylim(bottom=0)
    errors = bottom.twinx()
    errors.plot(
        t, [row["errors"] for row in timeline], color="tab:red", marker="x", linestyle=":", label="failed rollouts"
    )
    errors.set_ylabel("failed rollouts")
    errors.set_ylim(bottom=0, top=max(1, *(row["errors"] for row in timeline)) * 1.2)
    errors.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count: no 0.2 failed rollouts
    _legend_above(bottom, bottom.get_lines() + errors.get_lines())
    _short_ticks(top, tokens, bottom, errors)
    return figure


def throughput_chart(timeline: list[dict[str, Any]]) -> bytes | None:
    if len(timeline) < MIN_WINDOWS:
        return None
    return _png(throughput_figure(timeline))


def latency_cdf_figure(curves: dict[str, list[float]]) -> Figure:
    """Fraction of rollouts (or calls) done within x milliseconds, on a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = _figure(8, 4)
    axes = _subplots(figure)
    lo, hi = math.inf, 0.0
    for name, values in curves.items():
        xs = [max(v, 1e-3) for v in values]
        lo, hi = min(lo, xs[0]), max(hi, xs[-1])
        axes.plot(xs, [i / max(1, len(values) - 1) for i in range(len(values))], label=name)
    axes.set_xscale("log")
    # Plain labels (0.01, 1, 100, 2k) instead of matplotlib's 10^n mathtext; 1-2-5 steps when there are few decades.
    wide = math.log10(hi / lo) > 3
    axes.xaxis.set_major_locator(LogLocator(10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(_short))
    if wide:  # minor ticks (and grid lines) at 2 and 5 only: each tick costs ~1.7 ms to make and draw
        axes.xaxis.set_minor_locator(LogLocator(10, subs=(2.0, 5.0)))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction done")
    axes.set_ylim(0, 1)
    axes.grid(True, which="both", alpha=0.3)
    axes.axhline(0.5, color="grey", linewidth=0.5)
    axes.axhline(0.99, color="grey", linewidth=0.5)
    axes.legend(fontsize=8)
    _title(axes, "Latency CDF")
    return figure


def latency_cdf_chart(cdfs: dict[str, list[float]]) -> bytes | None:
    curves = {name: values for name, values in cdfs.items() if values}
    return _png(latency_cdf_figure(curves)) if curves else None


def reward_figure(envs: list[tuple[str, dict[str, Any]]]) -> Figure:
    """One bar chart per environment: exact values as labelled bars, bins as contiguous bars."""
    columns = min(3, len(envs))
    rows = math.ceil(len(envs) / columns)
    figure = _figure(4 * columns, 3 * rows)
    grid = _subplots(figure, rows, columns, top=0.3, row_gap=0.85, column_gap=0.85, squeeze=False)
    cells = [a for row in grid for a in row]
    for axes, (env, stats) in zip(cells, envs, strict=False):
        bins = stats["histogram"]
        if all(b["lo"] == b["hi"] for b in bins):
            labels = [f"{b['lo']:g}" for b in bins]
            axes.bar(labels, [b["count"] for b in bins], color="tab:blue")
        else:
            axes.bar(
                [b["lo"] for b in bins],
                [b["count"] for b in bins],
                width=[b["hi"] - b["lo"] for b in bins],
                align="edge",
                color="tab:blue",
                edgecolor="white",
            )
        _title(axes, f"{env}: {stats['count']} rollouts, mean {stats['mean']:.3g}", fontsize=9)
        axes.set_xlabel("reward")
        axes.set_ylabel("rollouts")
    _short_ticks(*cells)
    for axes in cells[len(envs) :]:
        axes.set_visible(False)
    return figure


def reward_chart(rewards: dict[str, Any]) -> bytes | None:
    envs = [(env, stats) for env, stats in rewards.items() if stats["histogram"]]
    return _png(reward_figure(envs)) if envs else None


def parallel_figure(steps: list[dict[str, Any]], title: str) -> Figure:
    """Throughput and latency per --parallel step of a sweep (the `rollouts tune` table)."""
    figure = _figure(8, 4)
    axes = _subplots(figure, right=TWIN)
    x = [row["parallel"] for row in steps]
    axes.plot(x, [row["throughput"] for row in steps], marker="o", color="tab:blue", label="requests/s")
    axes.set_xscale("log", base=2)
    axes.set_xticks(x, [str(v) for v in x])
    axes.set_xlabel("--parallel")
    axes.set_ylabel("successful requests/s")
    axes.set_ylim(bottom=0)
    latency = axes.twinx()
    latency.plot(x, [row["p50_ms"] for row in steps], color="tab:orange", linestyle="--", marker=".", label="p50 ms")
    latency.plot(x, [row["p95_ms"] for row in steps], color="tab:red", linestyle=":", marker=".", label="p95 ms")
    latency.set_ylabel("latency (ms)")
    latency.set_ylim(bottom=0)
    knee = next((row for row in steps if row.get("chosen")), None)
    if knee:
        axes.axvline(knee["parallel"], color="green", linewidth=1.5, label=f"use {knee['parallel']}")
    axes.legend(handles=axes.get_lines() + latency.get_lines(), loc="upper left", fontsize=8)
    _title(axes, title)
    _short_ticks(axes, latency)
    return figure


def parallel_chart(steps: list[dict[str, Any]], title: str) -> bytes | None:
    return _png(parallel_figure(steps, title)) if steps else None


def profile_charts(profile: dict[str, Any]) -> dict[str, bytes]:
    """The run's charts by file name; a chart with nothing to show is left out."""
    charts = {
        "throughput.png": throughput_chart(profile["timeline"]),
        "latency_cdf.png": latency_cdf_chart(profile["latency_cdf_ms"]),
        "rewards.png": reward_chart(profile["rewards"]),
    }
    return {name: png for name, png in charts.items() if png}

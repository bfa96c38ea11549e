"""PNG charts of a run profile: throughput over time, the latency CDF and the reward histogram per environment."""

from __future__ import annotations

import io
import math
from typing import Any

DPI = 100


def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot state, safe from a worker thread, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def throughput_chart(timeline: list[dict[str, Any]]) -> bytes | None:
    """Rollouts/s and output tokens/s above; rollouts in flight, the --parallel limit and errors below."""
    if not timeline:
        return None
    figure = _figure(8, 5)
    top, bottom = figure.subplots(2, 1, sharex=True)
    t = [row["t_s"] + row["window_s"] / 2 for row in timeline]
    top.plot(t, [row["rollouts_per_s"] for row in timeline], marker="o", color="tab:blue", label="rollouts/s")
    top.set_ylabel("rollouts/s")
    top.set_ylim(bottom=0)
    tokens = top.twinx()
    tokens.plot(t, [row["output_tokens_per_s"] for row in timeline], color="tab:green", alpha=0.6, label="output tokens/s")
    tokens.set_ylabel("output tokens/s")
    tokens.set_ylim(bottom=0)
    top.legend(handles=top.get_lines() + tokens.get_lines(), loc="best", fontsize=8, framealpha=0.8)
    top.set_title("Throughput per window")
    bottom.plot(t, [row["in_flight_mean"] for row in timeline], color="tab:purple", label="in flight (mean)")
    bottom.plot(t, [row["in_flight_max"] for row in timeline], color="tab:purple", alpha=0.35, linestyle="--",
                label="in flight (max)")
    if any(row.get("parallel") is not None for row in timeline):
        bottom.step(t, [row.get("parallel") for row in timeline], where="mid", color="black", label="--parallel")
    bottom.set_ylabel("rollouts in flight")
    bottom.set_xlabel("seconds since the first request")
    bottom.set_ylim(bottom=0)
    errors = bottom.twinx()
    errors.plot(t, [row["errors"] for row in timeline], color="tab:red", marker="x", linestyle=":", label="failed rollouts")
    errors.set_ylabel("failed rollouts")
    errors.set_ylim(bottom=0, top=max(1, *(row["errors"] for row in timeline)) * 1.2)
    bottom.legend(handles=bottom.get_lines() + errors.get_lines(), loc="best", fontsize=8, framealpha=0.8)
    return _png(figure)


def latency_cdf_chart(cdfs: dict[str, list[float]]) -> bytes | None:
    """Fraction of rollouts (or calls) done within x milliseconds, on a log axis."""
    curves = {name: values for name, values in cdfs.items() if values}
    if not curves:
        return None
    figure = _figure(8, 4)
    axes = figure.subplots()
    for name, values in curves.items():
        fractions = [i / (len(values) - 1) for i in range(len(values))]
        axes.plot([max(v, 1e-3) for v in values], fractions, label=name)
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction done")
    axes.set_ylim(0, 1)
    axes.grid(True, which="both", alpha=0.3)
    axes.axhline(0.5, color="grey", linewidth=0.5)
    axes.axhline(0.99, color="grey", linewidth=0.5)
    axes.legend(fontsize=8)
    axes.set_title("Latency CDF")
    return _png(figure)


def reward_chart(rewards: dict[str, Any]) -> bytes | None:
    """One bar chart per environment: exact values as labelled bars, bins as contiguous bars."""
    envs = [(env, stats) for env, stats in rewards.items() if stats["histogram"]]
    if not envs:
        return None
    columns = min(3, len(envs))
    rows = math.ceil(len(envs) / columns)
    figure = _figure(4 * columns, 3 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (env, stats) in zip([a for row in grid for a in row], envs, strict=False):
        bins = stats["histogram"]
        if all(b["lo"] == b["hi"] for b in bins):
            labels = [f"{b['lo']:g}" for b in bins]
            axes.bar(labels, [b["count"] for b in bins], color="tab:blue")
        else:
            axes.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=[b["hi"] - b["lo"] for b in bins],
                     align="edge", color="tab:blue", edgecolor="white")
        axes.set_title(f"{env}: {stats['count']} rollouts, mean {stats['mean']:.3g}", fontsize=9)
        axes.set_xlabel("reward")
        axes.set_ylabel("rollouts")
    for axes in [a for row in grid for a in row][len(envs):]:
        axes.set_visible(False)
    return _png(figure)


def parallel_chart(steps: list[dict[str, Any]], title: str) -> bytes | None:
    """Throughput and latency per --parallel step of a sweep (the `rollouts tune` table)."""
    if not steps:
        return None
    figure = _figure(8, 4)
    axes = figure.subplots()
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
    axes.set_title(title)
    return _png(figure)


def profile_charts(profile: dict[str, Any]) -> dict[str, bytes]:
    """The run's charts by file name; a chart with nothing to show is left out."""
    charts = {"throughput.png": throughput_chart(profile["timeline"]),
              "latency_cdf.png": latency_cdf_chart(profile["latency_cdf_ms"]),
              "rewards.png": reward_chart(profile["rewards"])}
    return {name: png for name, png in charts.items() if png}

"""The run report's charts: PNGs of the expected size, and nothing drawn outside a figure or over another label.

The charts use fixed margins instead of a layout engine, so these tests stand where the layout engine stood: every
label, tick label, title and legend of each chart is inside its figure and overlaps no other text, with data chosen
to stretch the labels (millions of tokens/s, long environment names, many environments, failures, --parallel).
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
from PIL import Image

from rollouts.report import charts
from rollouts.report.charts import _short

PNG = b"\x89PNG\r\n\x1a\n"


def timeline(windows: int, *, scale: float = 1.0, errors: bool = False, parallel: bool = False) -> list[dict[str, Any]]:
    return [
        {
            "t_s": 10.0 * i,
            "window_s": 10.0,
            "rollouts": 40 * i,
            "rollouts_per_s": scale * (4 + i % 5),
            "output_tokens_per_s": scale * 1500.0 * (1 + i % 7),
            "in_flight_mean": scale * 60.0,
            "in_flight_max": int(scale * 64),
            "errors": (i % 4) * 3 if errors else 0,
            "parallel": (64 if i < windows // 2 else 128) if parallel else None,
        }
        for i in range(windows)
    ]


def cdfs(lo: float, hi: float) -> dict[str, list[float]]:
    step = (hi / lo) ** (1 / 100)
    return {
        "rollout total": [lo * step**i for i in range(101)],
        "model call": [lo * 0.8 * step**i for i in range(101)],
        "verify": [0.0] * 50 + [0.01 * (i + 1) for i in range(51)],
    }


def rewards(names: list[str], *, binned: bool = False) -> dict[str, Any]:
    bins = (
        [{"lo": i / 10, "hi": (i + 1) / 10, "count": 1000 * (i + 1)} for i in range(10)]
        if binned
        else [{"lo": 0.0, "hi": 0.0, "count": 120_000}, {"lo": 1.0, "hi": 1.0, "count": 80_000}]
    )
    return {name: {"count": 200_000, "mean": 0.4, "histogram": bins} for name in names}


FIGURES = {
    "throughput": lambda: charts.throughput_figure(timeline(12)),
    "throughput, millions of tokens/s, failures, --parallel": lambda: charts.throughput_figure(
        timeline(360, scale=900.0, errors=True, parallel=True)
    ),
    "latency CDF, a microsecond to an hour": lambda: charts.latency_cdf_figure(cdfs(0.01, 3_600_000.0)),
    "latency CDF, within one decade": lambda: charts.latency_cdf_figure(
        {name: values for name, values in cdfs(120.0, 480.0).items() if name != "verify"}
    ),
    "rewards, one env": lambda: charts.reward_figure(list(rewards(["math"]).items())),
    "rewards, five envs with long names, binned": lambda: charts.reward_figure(
        list(
            rewards(
                ["math", "calculator_with_tools", "kv_store", "exact_match_long", "remote/gym-resources"], binned=True
            ).items()
        )
    ),
    "tune sweep": lambda: charts.parallel_figure(
        [
            {"parallel": p, "throughput": 12.5 * p, "p50_ms": 200.0 + p, "p95_ms": 400.0 + 3 * p, "chosen": p == 256}
            for p in (16, 32, 64, 128, 256, 512, 1024, 2048)
        ],
        "rollouts tune: use --parallel 256",
    ),
}


def drawn_texts(figure) -> list[tuple[str, Any]]:
    """Every non-empty text the figure draws, with its box in pixels (tick labels outside the view are not drawn)."""
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    hidden = set()
    for axes in figure.axes:
        box = axes.get_window_extent(renderer)
        for axis, along in ((axes.xaxis, 0), (axes.yaxis, 1)):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                point = [axes.get_xlim()[0], axes.get_ylim()[0]]
                point[along] = tick.get_loc()
                pixel = axes.transData.transform(point)[along]
                if not (box.x0, box.y0)[along] - 0.5 <= pixel <= (box.x1, box.y1)[along] + 0.5:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [
        (t.get_text(), t.get_window_extent(renderer))
        for t in figure.findobj(Text)
        if t.get_visible() and t.get_text().strip() and id(t) not in hidden and (t.axes is None or t.axes.get_visible())
    ]


@pytest.mark.parametrize("name", list(FIGURES))
def test_no_label_leaves_the_figure_or_overlaps_another(name: str) -> None:
    figure = FIGURES[name]()
    width, height = figure.bbox.width, figure.bbox.height
    texts = drawn_texts(figure)
    assert len(texts) > 10
    for text, box in texts:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (text, box.bounds)
    for (a, box_a), (b, box_b) in itertools.combinations(texts, 2):
        overlap_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        overlap_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        assert overlap_w <= 1 or overlap_h <= 1, (a, b)


def test_the_throughput_legends_sit_outside_the_plots() -> None:
    figure = charts.throughput_figure(timeline(30, errors=True, parallel=True))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [axes.get_legend() for axes in figure.axes if axes.get_legend()]
    assert len(legends) == 2
    plots = [axes.get_window_extent(renderer) for axes in figure.axes]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert all(min(box.y1, p.y1) - max(box.y0, p.y0) <= 1 for p in plots), (box.bounds, [p.bounds for p in plots])
    assert [t.get_text() for t in legends[1].get_texts()] == [
        "in flight (mean)",
        "in flight (max)",
        "--parallel",
        "failed rollouts",
    ]


def test_profile_charts_are_decodable_pngs_of_the_expected_size() -> None:
    profile = {
        "timeline": timeline(12),
        "latency_cdf_ms": cdfs(1.0, 5000.0),
        "rewards": rewards(["math", "calculator", "kv_store", "exact_match"]),
    }
    pngs = charts.profile_charts(profile)
    assert list(pngs) == ["throughput.png", "latency_cdf.png", "rewards.png"]
    sizes = {}
    for name, png in pngs.items():
        assert png[:8] == PNG
        image = Image.open(io.BytesIO(png))
        image.load()  # decodes every row: a truncated file fails here
        sizes[name] = image.size
    # 100 dpi: 8x5 in, 8x4 in, and 4x3 in per environment, three to a row
    assert sizes == {"throughput.png": (800, 500), "latency_cdf.png": (800, 400), "rewards.png": (1200, 600)}


def test_charts_only_for_data_that_exist() -> None:
    empty = {
        "timeline": [],
        "latency_cdf_ms": {"rollout total": [], "verify": []},
        "rewards": {"math": {"histogram": []}},
    }
    assert charts.profile_charts(empty) == {}
    # A run shorter than one window (a 10-prompt run against a fast server) has one point per line: its figures are
    # the report's timeline table, and the chart is left out.
    one_window = {**empty, "timeline": timeline(1), "latency_cdf_ms": cdfs(1.0, 10.0)}
    assert list(charts.profile_charts(one_window)) == ["latency_cdf.png"]
    assert list(charts.profile_charts({**one_window, "timeline": timeline(2)})) == ["throughput.png", "latency_cdf.png"]
    assert charts.parallel_chart([], "nothing") is None


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        1e-13,
        0.001,
        0.05,
        0.25,
        1.0,
        7.5,
        12.0,
        999.0,
        1000.0,
        1250.0,
        12_500.0,
        125_000.0,
        999_000.0,
        1_500_000.0,
        20_000_000.0,
        3.2e9,
    ],
)
def test_tick_labels_are_at_most_five_characters(value: float) -> None:
    label = _short(value)
    assert len(label) <= 5, label
    assert float(label.rstrip("kMG")) * {"k": 1e3, "M": 1e6, "G": 1e9}.get(label[-1], 1) == pytest.approx(
        value, rel=0.01, abs=1e-12
    )

"""The run report's charts, read back from their SVG: well-formed documents of the expected size, nothing written
outside a chart or over another text, legends outside the plots, and values drawn where the axes say they are.

Text boxes are the layout's own estimate (`rollouts.report.svg.text_box`: per-character widths of the declared
fonts), rebuilt here from each <text> element's attributes, so the tests check what the file says, with data chosen
to stretch the labels (millions of tokens/s, long environment names, many environments, failures, --parallel).
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from rollouts.report import charts
from rollouts.report.charts import _short
from rollouts.report.svg import ASCENT, DESCENT, NAMESPACE, Box, text_box, text_width

NS = f"{{{NAMESPACE}}}"


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


SWEEP = [
    {"parallel": p, "throughput": 12.5 * p, "p50_ms": 200.0 + p, "p95_ms": 400.0 + 3 * p, "chosen": p == 256}
    for p in (16, 32, 64, 128, 256, 512, 1024, 2048)
]
CHARTS = {
    "throughput": lambda: charts.throughput_chart(timeline(12)),
    "throughput, millions of tokens/s, failures, --parallel": lambda: charts.throughput_chart(
        timeline(360, scale=900.0, errors=True, parallel=True)
    ),
    "latency CDF, a microsecond to an hour": lambda: charts.latency_cdf_chart(cdfs(0.01, 3_600_000.0)),
    "latency CDF, within one decade": lambda: charts.latency_cdf_chart(
        {name: values for name, values in cdfs(120.0, 480.0).items() if name != "verify"}
    ),
    "rewards, one env": lambda: charts.reward_chart(rewards(["math"])),
    "rewards, five envs with long names, binned": lambda: charts.reward_chart(
        rewards(["math", "calculator_with_tools", "kv_store", "exact_match_long", "remote/gym-resources"], binned=True)
    ),
    "rewards, an environment name longer than its chart": lambda: charts.reward_chart(
        rewards(["a_" + "very_" * 30 + "long_environment", "<b>&co"])
    ),
    "tune sweep": lambda: charts.parallel_chart(SWEEP, "rollouts tune: use --parallel 256"),
}


def parse(svg: bytes | None) -> ET.Element:
    assert svg is not None
    root = ET.fromstring(svg)  # raises on a document that is not well-formed
    assert root.tag == NS + "svg"
    return root


def size(root: ET.Element) -> tuple[float, float]:
    width, height = float(root.attrib["width"]), float(root.attrib["height"])
    assert root.attrib["viewBox"] == f"0 0 {width:g} {height:g}"
    return width, height


def texts(root: ET.Element) -> list[tuple[str, Box]]:
    """Every text of the chart with its estimated box, from the element's attributes alone."""
    out = []
    for element in root.iter(NS + "text"):
        x, y = float(element.attrib["x"]), float(element.attrib["y"])
        turn = element.attrib.get("transform")
        assert turn in (None, f"rotate(-90 {element.attrib['x']} {element.attrib['y']})"), turn
        text = element.text or ""
        anchor = element.attrib.get("text-anchor", "start")
        out.append((text, text_box(x, y, text, float(element.attrib["font-size"]), anchor, vertical=bool(turn))))
    return out


def labelled(root: ET.Element, region: Box | None = None) -> dict[str, float]:
    """The tick each label (anchored in `region`) names: x below a plot (centred labels), y beside it (a label's box is
    centred on its tick)."""
    out = {}
    for element in root.iter(NS + "text"):
        x, y = float(element.attrib["x"]), float(element.attrib["y"])
        if region and not (region.x0 <= x <= region.x1 and region.y0 <= y <= region.y1):
            continue
        if element.attrib.get("text-anchor") == "middle":
            out[element.text or ""] = x
        else:
            out[element.text or ""] = y - (ASCENT - DESCENT) / 2 * float(element.attrib["font-size"])
    return out


def frames(root: ET.Element) -> list[Box]:
    """The plots' outlines, top to bottom, left to right."""
    boxes = []
    for r in root.iter(NS + "rect"):
        if r.attrib.get("fill") == "none":
            x, y = float(r.attrib["x"]), float(r.attrib["y"])
            boxes.append(Box(x, y, x + float(r.attrib["width"]), y + float(r.attrib["height"])))
    return sorted(boxes, key=lambda b: (b.y0, b.x0))


def left_of(plot: Box) -> Box:
    return Box(0, plot.y0 - 10, plot.x0, plot.y1 + 10)


def below(plot: Box) -> Box:
    return Box(0, plot.y1 + 10, 10_000, plot.y1 + 30)


def points(element: ET.Element) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in element.attrib["points"].split())]


@pytest.mark.parametrize("name", list(CHARTS))
def test_no_text_leaves_the_chart_or_overlaps_another(name: str) -> None:
    root = parse(CHARTS[name]())
    width, height = size(root)
    boxes = texts(root)
    assert len(boxes) > 10
    for text, box in boxes:
        assert text.strip(), "an empty text element"
        assert box.inside(width, height), (text, box)
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert box_a.overlap(box_b) <= 0, (a, b)


def test_the_throughput_legends_sit_outside_the_plots() -> None:
    root = parse(charts.throughput_chart(timeline(30, errors=True, parallel=True)))
    plots = frames(root)
    assert len(plots) == 2
    legend = ["rollouts/s", "output tokens/s", "in flight (mean)", "in flight (max)", "--parallel", "failed rollouts"]
    entries = [(text, box) for text, box in texts(root) if text in legend and not (box.x1 - box.x0 < box.y1 - box.y0)]
    assert [text for text, _ in entries] == legend  # each once, in this order (y labels read upwards: left out)
    for text, box in entries:
        assert all(box.overlap(plot) <= 0 for plot in plots), (text, box)
    lower = [box for text, box in entries[2:]]
    assert len({box.y1 for box in lower}) == 1 and all(a.x1 < b.x0 for a, b in itertools.pairwise(lower))


def test_profile_charts_are_svg_documents_of_the_expected_size() -> None:
    profile = {
        "timeline": timeline(12),
        "latency_cdf_ms": cdfs(1.0, 5000.0),
        "rewards": rewards(["math", "calculator", "kv_store", "exact_match"]),
    }
    svgs = charts.profile_charts(profile)
    assert list(svgs) == ["throughput.svg", "latency_cdf.svg", "rewards.svg"]
    sizes = {name: size(parse(svg)) for name, svg in svgs.items()}
    # 800 x 500, 800 x 400, and 400 x 300 per environment, three to a row
    assert sizes == {"throughput.svg": (800, 500), "latency_cdf.svg": (800, 400), "rewards.svg": (1200, 600)}
    titles = [text for text, _ in texts(parse(svgs["rewards.svg"])) if "rollouts, mean" in text]
    assert titles == [f"{env}: 200000 rollouts, mean 0.4" for env in profile["rewards"]]


@pytest.mark.parametrize("name", list(CHARTS))
def test_the_same_input_gives_the_same_bytes(name: str) -> None:
    assert CHARTS[name]() == CHARTS[name]()


def test_text_is_escaped_and_a_title_too_long_for_its_chart_is_cut() -> None:
    long = "a_" + "very_" * 30 + "long_environment"
    odd = 'x<y> & "z"\x01\udcff'
    svg = charts.reward_chart(rewards([long, odd]))
    assert svg is not None and b"<y>" not in svg and b"\x01" not in svg
    titles = [text for text, _ in texts(parse(svg)) if text.startswith(("a_", "x<"))]
    assert titles[0].startswith("a_very_very_") and titles[0].endswith("…") and len(titles[0]) < len(long)
    assert titles[1] == 'x<y> & "z"\ufffd\ufffd: 200000 rollouts, mean 0.4'


def test_the_latency_axis_has_a_tick_at_each_decade_and_puts_values_where_its_ticks_say() -> None:
    root = parse(charts.latency_cdf_chart({"rollout total": [10.0 ** (i / 10) for i in range(-20, 61)]}))
    (plot,) = frames(root)
    at = labelled(root, below(plot))
    decades = ["0.01", "0.1", "1", "10", "100", "1k", "10k", "100k", "1M"]
    assert [label for label in decades if label in at] == decades
    spacing = [at[b] - at[a] for a, b in itertools.pairwise(decades)]
    assert max(spacing) - min(spacing) < 0.05  # a decade is the same width everywhere: a log axis
    (curve,) = [p for p in root.iter(NS + "polyline")]
    line = points(curve)
    assert line[0][0] == pytest.approx(at["0.01"], abs=0.02) and line[-1][0] == pytest.approx(at["1M"], abs=0.02)
    # the rollout at 10^0.5 ms, 25 of 80 steps along: half a decade right of "1", at 25/80 of the way from 0 to 1
    x, y = line[25]
    assert x == pytest.approx((at["1"] + at["10"]) / 2, abs=0.02)
    fractions = labelled(root, left_of(plot))
    assert fractions["0"] == pytest.approx(plot.y1) and fractions["1"] == pytest.approx(plot.y0)
    assert y == pytest.approx(plot.y1 + (plot.y0 - plot.y1) * 25 / 80, abs=0.02)


def test_the_latency_axis_within_one_decade_is_labelled_at_each_digit() -> None:
    root = parse(charts.latency_cdf_chart({"model call": [120.0, 200.0, 480.0]}))
    at = labelled(root, below(frames(root)[0]))
    assert [label for label in ("200", "300", "400") if label in at] == ["200", "300", "400"]
    assert (at["300"] - at["200"]) / (at["400"] - at["300"]) == pytest.approx(math.log(1.5) / math.log(4 / 3), rel=1e-3)


def test_bar_heights_are_proportional_to_counts_and_stand_on_zero() -> None:
    root = parse(charts.reward_chart(rewards(["math"], binned=True)))
    bars = [r for r in root.iter(NS + "rect") if r.attrib.get("fill") == charts.BLUE]
    counts = [1000 * (i + 1) for i in range(10)]
    assert len(bars) == len(counts)
    (plot,) = frames(root)
    at = labelled(root, left_of(plot))
    heights = [float(b.attrib["height"]) for b in bars]
    for bar, height, count in zip(bars, heights, counts, strict=True):
        assert float(bar.attrib["y"]) + height == pytest.approx(at["0"], abs=0.02)
        assert height == pytest.approx((at["0"] - at["2k"]) * count / 2000, abs=0.02)
    # contiguous bins: each bar starts where the one before it ends, 0.1 reward wide, the first at reward 0
    edges = [(float(b.attrib["x"]), float(b.attrib["x"]) + float(b.attrib["width"])) for b in bars]
    assert all(a[1] == pytest.approx(b[0], abs=0.02) for a, b in itertools.pairwise(edges))
    x = labelled(root, below(plot))
    assert edges[0][0] == pytest.approx(x["0"], abs=0.02) and edges[-1][1] == pytest.approx(x["1"], abs=0.02)


def test_a_known_point_of_the_throughput_chart_lands_on_its_axes() -> None:
    root = parse(charts.throughput_chart(timeline(12)))
    upper, lower = frames(root)
    (rates,) = [p for p in root.iter(NS + "polyline") if p.attrib["stroke"] == charts.BLUE]
    seconds, per_s = labelled(root, below(lower)), labelled(root, left_of(upper))
    # the window from 40 s to 50 s is drawn at 45 s, its 4 + 4 % 5 = 8 rollouts/s at the "8" tick
    x, y = points(rates)[4]
    assert x == pytest.approx(seconds["25"] + (seconds["50"] - seconds["25"]) * 20 / 25, abs=0.02)
    assert y == pytest.approx(per_s["8"], abs=0.02)


def test_a_missing_value_breaks_its_line() -> None:
    rows = timeline(6, parallel=True)
    rows[2]["output_tokens_per_s"] = float("nan")
    rows[3]["parallel"] = None
    svg = charts.throughput_chart(rows)
    assert svg is not None and b"nan" not in svg
    lines = [p for p in parse(svg).iter(NS + "polyline")]
    assert len([p for p in lines if p.attrib["stroke"] == charts.GREEN]) == 2  # windows 0-1 and 3-5
    assert len([p for p in lines if p.attrib["stroke"] == "#000000"]) == 2  # the --parallel steps, either side


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
    assert list(charts.profile_charts(one_window)) == ["latency_cdf.svg"]
    assert list(charts.profile_charts({**one_window, "timeline": timeline(2)})) == ["throughput.svg", "latency_cdf.svg"]
    assert charts.parallel_chart([], "nothing") is None


def test_the_width_estimate_covers_both_declared_fonts() -> None:
    # DejaVu Sans' advances (per 2048 em units): "0" 1303, "W" 2025, "i" 569; Liberation Sans' (Arial's): "W" 1933
    assert text_width("0", 1000) >= 1303 / 2.048 and text_width("W", 1000) >= 2025 / 2.048
    assert text_width("i", 1000) >= 569 / 2.048 and text_width("é", 10) == 10  # outside ASCII: one em


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

"""A small SVG writer for the run report's charts: lines, rectangles, markers and text, written in a fixed order with
fixed rounding, so the same chart is the same bytes.

Nothing measures text at drawing time (no font is loaded): the layout estimates a text's box from a table of
character widths, and tests/unit/test_charts.py reads the boxes back from the SVG with the same estimate. The table
holds, for each printable ASCII character, the larger advance width of the two fonts the charts ask for: DejaVu Sans
(Linux's default sans-serif) and Liberation Sans (Arial's metrics), in thousandths of the font size, so a box holds
the text in either. Any other character counts as one em, as wide as the widest of them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

NAMESPACE = "http://www.w3.org/2000/svg"
FONT_FAMILY = "DejaVu Sans, Arial, sans-serif"
# Advance widths of ' ' (32) to '~' (126), max(DejaVu Sans, Liberation Sans), per 1000 of the font size.
_WIDTHS = (
    318, 401, 460, 838, 637, 951, 780, 275, 391, 391, 500, 838, 318, 361, 318, 337, 637, 637, 637, 637, 637, 637, 637,
    637, 637, 637, 337, 337, 838, 838, 838, 557, 1016, 685, 687, 723, 771, 667, 611, 778, 752, 295, 500, 667, 558, 863,
    749, 788, 667, 788, 723, 667, 611, 732, 685, 989, 686, 667, 686, 391, 337, 391, 838, 557, 500, 613, 635, 550, 635,
    616, 353, 635, 634, 278, 278, 580, 278, 975, 634, 612, 635, 635, 412, 521, 393, 634, 592, 818, 592, 592, 525, 637,
    337, 637, 838,
)  # fmt: skip
OTHER_WIDTH = 1000
# The line box around the baseline, in font sizes: DejaVu Sans' ascender and descender (Liberation Sans' are smaller).
ASCENT, DESCENT = 0.93, 0.24
# Characters XML 1.0 cannot hold at all, even escaped (a control character in an environment name), and lone
# surrogates (a name read with errors="surrogateescape"), which UTF-8 cannot encode.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def text_width(text: str, size: float) -> float:
    """The estimated advance width of `text` at `size` px (an upper bound for the two declared fonts' ASCII)."""
    total = sum(_WIDTHS[ord(c) - 32] if 32 <= ord(c) <= 126 else OTHER_WIDTH for c in text)
    return total * size / 1000


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlap(self, other: Box) -> float:
        """How far the two boxes overlap along the axis where they overlap least (<= 0: they do not)."""
        return min(min(self.x1, other.x1) - max(self.x0, other.x0), min(self.y1, other.y1) - max(self.y0, other.y0))

    def inside(self, width: float, height: float) -> bool:
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height


def text_box(x: float, y: float, text: str, size: float, anchor: str = "start", vertical: bool = False) -> Box:
    """The box of a text drawn at (x, y) (its baseline point), anchored at start, middle or end; `vertical` text is
    turned a quarter counter-clockwise about that point (it reads upwards, as a y axis label does)."""
    width = text_width(text, size)
    start = {"start": 0.0, "middle": -width / 2, "end": -width}[anchor]
    if vertical:
        return Box(x - ASCENT * size, y - start - width, x + DESCENT * size, y - start)
    return Box(x + start, y - ASCENT * size, x + start + width, y + DESCENT * size)


def fit(text: str, size: float, width: float) -> str:
    """`text`, cut short with an ellipsis if its estimated width exceeds `width`."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"


def num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros (no "-0")."""
    out = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if out == "-0" else out


def escape(text: str) -> str:
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _attributes(options: dict[str, str | float | None]) -> str:
    out = []
    for key, value in options.items():
        if value is not None:
            out.append(f' {key.replace("_", "-")}="{num(value) if isinstance(value, float | int) else escape(value)}"')
    return "".join(out)


@dataclass(frozen=True)
class Stroke:
    """How a line is drawn: colour, width in px, an optional dash pattern and opacity."""

    color: str
    width: float = 2.0
    dash: str | None = None
    opacity: float | None = None

    def attributes(self) -> dict[str, str | float | None]:
        return {
            "stroke": self.color,
            "stroke_width": self.width,
            "stroke_dasharray": self.dash,
            "stroke_opacity": self.opacity,
        }


class Svg:
    """An SVG document of `width` x `height` px on a white background, drawn element by element."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._parts = [
            f'<svg xmlns="{NAMESPACE}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{FONT_FAMILY}">',
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        ]

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: Stroke) -> None:
        self._element("line", x1=x1, y1=y1, x2=x2, y2=y2, **stroke.attributes())

    def polyline(self, points: Sequence[tuple[float, float]], stroke: Stroke) -> None:
        if len(points) < 2:
            return
        path = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        self._element("polyline", points=path, fill="none", stroke_linejoin="round", **stroke.attributes())

    def rect(
        self, x: float, y: float, width: float, height: float, fill: str, stroke: Stroke | None = None, **options: float
    ) -> None:
        outline = stroke.attributes() if stroke else {}
        self._element("rect", x=x, y=y, width=width, height=height, fill=fill, **outline, **options)

    def marker(self, x: float, y: float, shape: str, color: str, opacity: float | None = None) -> None:
        """A data point: "o" a filled circle, "." a small one, "x" a cross."""
        if shape == "x":
            r, stroke = 4.0, Stroke(color, 1.5, opacity=opacity)
            self.line(x - r, y - r, x + r, y + r, stroke)
            self.line(x - r, y + r, x + r, y - r, stroke)
        else:
            self._element("circle", cx=x, cy=y, r=4.0 if shape == "o" else 2.5, fill=color, fill_opacity=opacity)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float,
        anchor: str = "start",
        vertical: bool = False,
    ) -> Box:
        """Text with its baseline point at (x, y); returns its estimated box (`text_box`)."""
        turn = f"rotate(-90 {num(x)} {num(y)})" if vertical else None
        options = _attributes(
            {"x": x, "y": y, "font_size": size, "text_anchor": None if anchor == "start" else anchor, "transform": turn}
        )
        self._parts.append(f"<text{options}>{escape(text)}</text>")
        return text_box(x, y, text, size, anchor, vertical)

    def to_bytes(self) -> bytes:
        return ("\n".join([*self._parts, "</svg>"]) + "\n").encode()

    def _element(self, tag: str, **options: str | float | None) -> None:
        self._parts.append(f"<{tag}{_attributes(options)}/>")

"""Markdown tables for the run report and every data card: one rule for cells, so a `|` never breaks a row."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def escape(value: Any) -> str:
    """A value as table-cell text: `|` escaped, line breaks as spaces."""
    return str(value).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def row(cells: Iterable[Any]) -> str:
    """One table row; each cell escaped (format numbers before, as each table wants them)."""
    return "| " + " | ".join(escape(c) for c in cells) + " |"


def header(names: Iterable[str], right: Iterable[bool] | None = None) -> list[str]:
    """The header row and its rule; `right` marks the columns aligned right (numbers)."""
    names = list(names)
    aligns = list(right) if right is not None else [False] * len(names)
    return [row(names), "| " + " | ".join("---:" if r else "---" for r in aligns) + " |"]

"""Polars schemas of the stored rollout row, derived from its one typed description (`records.RolloutRow`).

A reader asks for the fields it needs as a nested spec (`{"status": True, "response": {"usage": True}}`) and gets
the polars types the TypedDicts declare; where it reads a field differently on purpose (token ids as Int32 to halve
memory, a JSON value as its text), it says so with an explicit dtype in the spec. A field that is not in the row's
description is an error here, so a reader can never drift from what the collector writes.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

import polars as pl
import typing_extensions

from rollouts.records import RolloutRow

Spec = Mapping[str, "bool | pl.DataType | Spec"]

_SCALARS: dict[Any, pl.DataType] = {
    int: pl.Int64(),
    float: pl.Float64(),
    str: pl.String(),
    bool: pl.Boolean(),
}


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and typing_extensions.is_typeddict(tp)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    if get_origin(tp) is typing.Literal:
        values = get_args(tp)
        return type(values[0]) if values and all(isinstance(v, type(values[0])) for v in values) else tp
    return tp


def dtype_of(tp: Any, spec: bool | pl.DataType | Spec = True, where: str = "row") -> pl.DataType:
    """The polars type of annotation `tp`, narrowed to `spec` (True: all of it; a mapping: those fields)."""
    if isinstance(spec, pl.DataType):
        return spec
    tp = _strip_optional(tp)
    if _is_typeddict(tp):
        return pl.Struct(_fields_of(tp, spec, where))
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        return pl.List(dtype_of(item, spec, f"{where}[]"))
    if tp in _SCALARS:
        if spec is not True:
            raise TypeError(f"{where} is a {tp.__name__}: it has no fields to select")
        return _SCALARS[tp]
    raise TypeError(f"{where}: {tp!r} has no polars type; give the reader's dtype in its spec")


def _fields_of(tp: Any, spec: bool | Spec, where: str) -> dict[str, pl.DataType]:
    """The polars types of the fields of TypedDict `tp` that `spec` selects (True: all of them)."""
    hints = get_type_hints(tp)
    if spec is True:
        selected: Spec = dict.fromkeys(hints, True)
    elif isinstance(spec, Mapping):
        selected = spec
    else:
        raise TypeError(f"{where}: a spec of False selects no fields of {tp.__name__}")
    fields = {}
    for name, sub in selected.items():
        if name not in hints:
            raise KeyError(f"{where}.{name} is not a field of the stored row ({tp.__name__})")
        fields[name] = dtype_of(hints[name], sub, f"{where}.{name}")
    return fields


def row_schema(spec: Spec) -> dict[str, pl.DataType]:
    """The polars schema of the row fields `spec` names (see the module docstring)."""
    return _fields_of(RolloutRow, spec, "row")

"""Command-line options generated from pydantic config models: one `Field` makes one flag, its help and its checks.

Each leaf field of a model becomes `--field-name` (or its `rollouts.options.Cli` flag): the type gives the argparse
type (bools are switches, Literals are choices, tuples take several values, dicts take JSON or NAME=VALUE, lists
repeat or take commas), the description and default give the help text. Sections (nested models) become help groups.
Options left out on the command line are left out of the config, so the model's defaults apply: one default, declared
once. `build(args, options)` turns parsed arguments back into the nested dict the model validates, and `validated`
validates it, naming the flags in its errors.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rollouts.errors import ConfigError
from rollouts.options import Cli, marker

NONE_WORDS = frozenset({"none", "null", "off"})


@dataclass(frozen=True)
class Option:
    path: tuple[str, ...]  # field names from the root model down to the leaf
    flag: str  # "--model-url", or the positional's name
    dest: str

    @property
    def label(self) -> str:
        return self.flag if self.flag.startswith("-") else self.flag.upper()


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


M = TypeVar("M", bound=BaseModel)


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _nullable(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _default_text(field: FieldInfo) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined or value in ({}, [], ()) or isinstance(value, bool):
        return ""
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f" (default {value})"


def _argparse_kwargs(name: str, field: FieldInfo, cli: Cli) -> dict[str, Any]:
    """argparse keyword arguments for one leaf field."""
    annotation, optional = _unwrap_optional(field.annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    help_text = (field.description or "").replace("%", "%%") + _default_text(field)
    kw: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
    kw["metavar"] = cli.metavar if cli.metavar is not None else name.upper()
    if annotation is bool:
        kw["action"] = "store_false" if cli.invert else "store_true"
        kw.pop("metavar", None)
        return kw
    if origin is Literal:
        kw["choices"] = list(args)
        kw.pop("metavar")
    elif origin is list:
        (item,) = args
        kw["action"] = "append"  # repeat the flag, or give a comma list: the model's validator splits it
        if typing.get_origin(item) is Literal and cli.metavar is None:
            kw["metavar"] = "|".join(typing.get_args(item)) + "[,...]"
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        kw["action"] = "append"  # repeat the flag, or give a comma list: the model's validator splits it
    elif origin is tuple:
        kw["nargs"] = len(args)
        kw["type"] = _nullable(args[0]) if optional else args[0]
    elif origin is dict:
        if args and args[1] is str:
            kw["action"] = "append"  # NAME=VALUE, repeatable
        else:
            kw["type"] = _json_object
    elif annotation in (int, float):
        kw["type"] = _nullable(annotation) if optional and field.default is not None else annotation
    if field.is_required() and not cli.positional:
        kw["required"] = True
    return kw


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    command: str,
    prefix: tuple[str, ...] = (),
    group: Any = None,
) -> list[Option]:
    """Add one option per leaf field of `model` (sections become help groups); return how to read them back."""
    options: list[Option] = []
    target = group or parser
    for name, field in model.model_fields.items():
        cli = marker(field, Cli) or Cli()
        if cli.hidden:
            continue
        path = (*prefix, name)
        dest = "__".join(path)
        if _is_model(field.annotation) and cli.flag is None:
            title = name if not prefix else f"{prefix[-1]}.{name}"
            doc = (field.annotation.__doc__ or "").strip()
            section = parser.add_argument_group(title, doc.splitlines()[0] if doc else None)
            options += add_model_options(parser, field.annotation, command=command, prefix=path, group=section)
            continue
        if cli.positional:
            nargs = "+" if typing.get_origin(field.annotation) is list else None
            target.add_argument(dest, metavar=cli.metavar or name.upper(), nargs=nargs, help=field.description)
            options.append(Option(path, name, dest))
            continue
        flag = (
            (cli.collect_flag if command == "collect" and cli.collect_flag else None)
            or cli.flag
            or "--" + name.replace("_", "-")
        )
        if _is_model(field.annotation):  # a whole section behind one flag (--format): parsed by the command
            target.add_argument(
                flag,
                dest=dest,
                action="append",
                default=argparse.SUPPRESS,
                metavar=cli.metavar,
                help=(field.description or "") + " (repeatable)",
            )
        else:
            target.add_argument(flag, dest=dest, **_argparse_kwargs(name, field, cli))
        options.append(Option(path, flag, dest))
    return options


def build(args: argparse.Namespace, options: list[Option], **given: Any) -> dict[str, Any]:
    """The nested dict of the options given on the command line (plus `given` top-level values)."""
    data: dict[str, Any] = dict(given)
    for option in options:
        if not hasattr(args, option.dest):
            continue
        node = data
        for part in option.path[:-1]:
            node = node.setdefault(part, {})
        node[option.path[-1]] = getattr(args, option.dest)
    return data


def validated(model: type[M], data: dict[str, Any], options: list[Option]) -> M:
    """`model` from the options given, or a ConfigError whose one line names each wrong flag."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(usage_errors(exc, options))) from None


def usage_errors(exc: ValidationError, options: list[Option]) -> list[str]:
    """One plain sentence per problem, naming the flag (never pydantic's wording or field paths)."""
    by_path = {o.path: o.label for o in options}
    messages = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        label = next((by_path[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in by_path), None)
        text = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "missing":
            text = "is required"
        elif error["type"] == "literal_error":
            text = f"must be one of {error.get('ctx', {}).get('expected', '')}"
        if label and label in text:
            messages.append(text)
        elif label:
            messages.append(f"{label}: {text}")
        elif error["type"] == "missing":
            messages.append(f"{'.'.join(loc)} is required")
        else:
            messages.append(text)
    return messages

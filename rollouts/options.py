"""Field markers: how a config field appears on the command line, and whether it is part of a run's identity.

A config option is declared once, as a pydantic field with a description; these markers, put in its `Annotated`
metadata, add only what the field's type cannot say. The command line (`commands/options.py`), the Prefect UI form
(the flow's parameter schema), the manifest and the run digest are all derived from the fields. An option that two
commands share (`--model-url` in `collect` and `tune`) is declared in one model and reused by the other with `field_of`.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Cli:
    """Command-line details of a field. `flag` replaces `--field-name`; `collect_flag` replaces it in `rollouts collect`
    only (where a generation option of the same name exists); `invert` makes a True-default bool a `--keep-x` switch;
    `positional` makes it an argument; `hidden` leaves it off the command line."""

    flag: str | None = None
    collect_flag: str | None = None
    metavar: str | tuple[str, ...] | None = None
    invert: bool = False
    positional: bool = False
    hidden: bool = False


@dataclass(frozen=True)
class Identity:
    """The field decides which rollouts exist and what they contain: it is part of the run digest."""


IDENTITY = Identity()


def field_of(model: type[BaseModel], name: str, *, required: bool = False) -> Any:
    """`model`'s field `name`, for another command that has the same option: its description, default, bounds,
    validators and Cli marker, so the option keeps one declaration
    (`api: Literal[...] = field_of(EndpointConfig, "api")`).
    `required` drops the default, for a command where the option has no alternative (no --model-block in `tune`).
    The Identity marker stays behind: only a collection run has an identity."""
    field = copy.copy(model.model_fields[name])
    field.metadata = [m for m in field.metadata if not isinstance(m, Identity)]
    if required:
        field.default = PydanticUndefined
    return field


def marker(field: FieldInfo, kind: type) -> Any:
    return next((m for m in field.metadata if isinstance(m, kind)), None)


def identity_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the fields marked IDENTITY, walking nested config models."""
    paths: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            paths += identity_fields(sub, (*prefix, name))
        elif marker(field, Identity):
            paths.append((*prefix, name))
    return paths


def form_schema(schema: dict[str, Any]) -> None:
    """A config model's JSON schema as a form shows it (pydantic's `json_schema_extra`): an optional field appears
    with its own type (`anyOf [T, null]` becomes T, a null default is dropped). Forms that render JSON schema, such
    as the Prefect UI's run form, otherwise show a type picker with "None" beside every optional field."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf", [])
        typed = [b for b in branches if b != {"type": "null"}]
        if len(typed) == 1 and len(branches) == 2:
            del prop["anyOf"]
            prop.update(typed[0])
        if "default" in prop and prop["default"] is None:
            del prop["default"]


# The model config of every config section a form shows (CollectConfig's sections, the process and quality options).
# Their validators and serializers are built on first use (`defer_build`), so a command's parser and its --help need
# only the fields: building them all took ~0.1 s of every `rollouts collect --help`. A flow's parameter schema
# serializes its parameters' defaults, which needs them built: a module that defines a flow calls `build_models` first.
FORM_MODEL = ConfigDict(frozen=True, extra="forbid", json_schema_extra=form_schema, defer_build=True)


def build_models(model: type[BaseModel]) -> None:
    """Build the validators and serializers of `model` and of every model its fields name, nested ones first."""
    for field in model.model_fields.values():
        for sub in models_in(field.annotation):
            build_models(sub)
    if not model.__pydantic_complete__:
        model.model_rebuild()


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation names (`X`, `X | None`, `list[X]`, `dict[str, X]`, `Annotated[X, ...]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in models_in(arg)]

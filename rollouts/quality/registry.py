"""The check registry: every health check is a function over a polars frame of the run, registered by its id.

    @register("empty_completion", needs=("final_text", "final_calls"))
    def empty_completion(frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
        '''No text and no tool call in the final turn.'''
        return result(frame, fired=..., evidence=...)

A check returns a frame of the same height and row order as its input with two columns:
  fired     Boolean: true = the check fired, false = it looked and found nothing, null = unobserved (the data it
            needs is missing from this row, e.g. no token ids)
  evidence  String: a short quote that shows why (the repeated span, the bad argument...); null when not fired

Scopes: a `rollout` check judges each row on its own, so the engine runs it chunk by chunk on the full frame
(`frame.FRAME_SCHEMA`). A `run` check needs the whole run (groups, tasks); it runs once, after every rollout check,
on the columns kept from each chunk (`frame.KEPT_COLUMNS`) plus `fired_<id>` for every rollout check that ran.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

from ..errors import ConfigError
from .config import QualityConfig

Scope = Literal["rollout", "run"]
CheckFn = Callable[[pl.DataFrame, QualityConfig], pl.DataFrame]
RESULT_SCHEMA: dict[str, pl.DataType] = {"fired": pl.Boolean(), "evidence": pl.String()}


@dataclass(frozen=True)
class Check:
    """A registered check: its id, scope, the frame columns it reads and what fires it (the function's docstring)."""

    id: str
    fn: CheckFn
    scope: Scope
    needs: tuple[str, ...]
    description: str

    def run(self, frame: pl.DataFrame, config: QualityConfig) -> pl.DataFrame:
        """The check on `frame`, its result validated: same height, `fired` and `evidence` with their types."""
        missing = [name for name in self.needs if name not in frame.columns]
        if missing:
            raise KeyError(f"check {self.id} needs frame columns {missing}")
        out = self.fn(frame, config)
        if out.height != frame.height:
            raise ValueError(f"check {self.id} returned {out.height} rows for {frame.height}")
        return out.select(pl.col("fired").cast(pl.Boolean), pl.col("evidence").cast(pl.String))


_REGISTRY: dict[str, Check] = {}
_BUILTINS = ("checks_group", "checks_text", "checks_tools")  # modules whose import registers the built-in checks
_builtins_loaded = False


def _load_builtins() -> None:
    """Register the built-in checks (once, first): every lookup and registration sees them, in the same order."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTINS:
            importlib.import_module(f"{__package__}.{module}")


def register(check_id: str, *, needs: Sequence[str], scope: Scope = "rollout") -> Callable[[CheckFn], CheckFn]:
    """Register `fn` as the check `check_id` (ids are unique: registering one twice is an error)."""
    _load_builtins()
    if not check_id.isidentifier():
        raise ValueError(f"check id {check_id!r} must be an identifier (it becomes a column and a CLI value)")

    def decorate(fn: CheckFn) -> CheckFn:
        if check_id in _REGISTRY:
            raise ValueError(f"check {check_id} is registered twice")
        doc = (fn.__doc__ or "").strip()
        description = " ".join(doc.split("\n\n")[0].split()) if doc else check_id
        _REGISTRY[check_id] = Check(check_id, fn, scope, tuple(needs), description)
        return fn

    return decorate


def is_builtin(check: Check) -> bool:
    """Whether `check` is one of this package's own (registered again by any process that imports it)."""
    return check.fn.__module__ in {f"{__package__}.{module}" for module in _BUILTINS}


def unregister(check_id: str) -> None:
    """Remove a check (tests and plugins that replace a built-in check)."""
    _load_builtins()
    _REGISTRY.pop(check_id, None)


def registered() -> list[Check]:
    """Every registered check, in registration order (rollout checks run in this order, then run checks)."""
    _load_builtins()
    return list(_REGISTRY.values())


def _known() -> list[str]:
    """The registered ids, rollout checks first (the order they run in)."""
    _load_builtins()
    return [check.id for check in sorted(_REGISTRY.values(), key=lambda check: check.scope == "run")]


class UnknownCheckError(ConfigError, KeyError):
    """An id that names no registered check: a usage error of whatever was given it (a KeyError too)."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0]) if self.args else ""


def get_check(check_id: str) -> Check:
    _load_builtins()
    try:
        return _REGISTRY[check_id]
    except KeyError:
        raise UnknownCheckError(f"unknown check {check_id!r}; known: {', '.join(_known())}") from None


def require_known(ids: Iterable[str], flag: str) -> None:
    """Refuse ids of `flag` that name no registered check, in one line naming them and the known ones."""
    _load_builtins()
    unknown = [check_id for check_id in ids if check_id not in _REGISTRY]
    if unknown:
        names = ", ".join(repr(check_id) for check_id in unknown)
        raise UnknownCheckError(f"{flag}: unknown check {names} (known: {', '.join(_known())})")


def require_known_checks(config: QualityConfig | None = None, drop_unhealthy: Sequence[str] = ()) -> None:
    """The check ids a command was given (--checks, --skip-checks, --drop-unhealthy) refused up front when unknown,
    before any rollout is collected or read."""
    if config is not None:
        require_known(config.checks or (), "--checks")
        require_known(config.skip_checks, "--skip-checks")
    require_known([check_id for check_id in drop_unhealthy if check_id != "all"], "--drop-unhealthy")


def selected_checks(config: QualityConfig) -> list[Check]:
    """The checks `config` asks for (all by default, minus `skip_checks`), unknown ids refused."""
    require_known_checks(config)
    chosen = config.checks if config.checks is not None else tuple(_REGISTRY)
    return [check for check in registered() if check.id in chosen and check.id not in config.skip_checks]


def result(frame: pl.DataFrame, fired: pl.Expr, evidence: pl.Expr) -> pl.DataFrame:
    """A check's result over `frame` from two expressions (evidence is kept only where the check fired)."""
    return frame.select(fired=fired.cast(pl.Boolean), evidence=pl.when(fired).then(evidence.cast(pl.String)))


def quoted(text: pl.Expr, limit: int) -> pl.Expr:
    """`text` as a one-line quote of at most `limit` characters (line breaks shown as \\n), in double quotes."""
    flat = text.str.replace_all("\r", "\\r", literal=True).str.replace_all("\n", "\\n", literal=True)
    cut = pl.when(flat.str.len_chars() > limit).then(flat.str.slice(0, limit - 1) + pl.lit("…")).otherwise(flat)
    return pl.lit('"') + cut + pl.lit('"')


def quote_text(text: str, limit: int) -> str:
    """`quoted` for one Python string."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return '"' + (flat if len(flat) <= limit else flat[: limit - 1] + "…") + '"'


def fired_col(check_id: str) -> str:
    """The check frame's column saying whether `check_id` fired on a rollout (null: unobserved)."""
    return f"fired_{check_id}"


def evidence_col(check_id: str) -> str:
    """The check frame's column holding `check_id`'s evidence for a rollout."""
    return f"evidence_{check_id}"

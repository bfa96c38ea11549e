"""Loading a user's environments: from a module (`--env-module my_pkg.my_env`) or the `rollouts.environments` entry
points.

A module's environments are its public module-level `Environment` instances (such as a `ToolEnvironment` built
with decorators) and the concrete `Environment` subclasses it defines itself (instantiated without arguments);
names starting with `_` are skipped. An entry point in the group `rollouts.environments` names either such a
module or one environment (an instance, or a class), for example in a package's `pyproject.toml`:

    [project.entry-points."rollouts.environments"]
    counter = "my_pkg.my_env"              # every environment the module defines
    kv_plus = "my_pkg.other:KvPlus"        # this one

Loading is plain importing, so it repeats cheaply in every process that builds environments (shard tasks on
threads or Dask workers alike). Every failure is a ConfigError naming the module and what went wrong.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from rollouts.envs.base import Environment
from rollouts.errors import ConfigError

ENTRY_POINT_GROUP = "rollouts.environments"


def _instantiate(obj: Any, origin: str) -> Environment | None:
    if isinstance(obj, Environment):
        return obj
    if inspect.isclass(obj) and issubclass(obj, Environment) and not inspect.isabstract(obj):
        try:
            return obj()
        except Exception as exc:
            raise ConfigError(
                f"{origin}: cannot create environment {obj.__name__} without arguments: {type(exc).__name__}: {exc}"
            ) from exc
    return None


def _checked(env: Environment, origin: str) -> Environment:
    name = getattr(env, "name", None)
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "_-." for ch in name):
        raise ConfigError(f"{origin}: environment {env!r} needs a `name` of letters, digits, '_', '-' or '.'")
    return env


def environments_of(module: ModuleType) -> dict[str, Environment]:
    """The environments a module declares (see the module docstring), by name."""
    origin = f"environment module {module.__name__!r}"
    public = [obj for attribute, obj in vars(module).items() if not attribute.startswith("_")]
    instances = [obj for obj in public if isinstance(obj, Environment)]
    classes = [
        obj
        for obj in public
        if inspect.isclass(obj)
        and issubclass(obj, Environment)
        and obj.__module__ == module.__name__
        and getattr(obj, "name", None)
        and not any(type(env) is obj for env in instances)
    ]  # imported classes (ToolEnvironment itself, a base class) are not this module's environments
    found: dict[str, Environment] = {}
    for obj in [*instances, *classes]:
        env = _instantiate(obj, origin)
        if env is None:
            continue
        _checked(env, origin)
        if found.get(env.name, env) is not env:
            raise ConfigError(f"{origin} defines two environments named {env.name!r}")
        found[env.name] = env
    return found


def import_env_module(path: str) -> ModuleType:
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        hint = " (is it installed, or on PYTHONPATH?)" if exc.name and path.startswith(exc.name) else ""
        raise ConfigError(f"cannot import environment module {path!r}: {exc}{hint}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise ConfigError(f"environment module {path!r} failed to import: {type(exc).__name__}: {exc}") from exc


def load_env_module(path: str) -> dict[str, Environment]:
    """Import `path` (a dotted module name) and return the environments it defines, by name."""
    if not path or not all(part.isidentifier() for part in path.split(".")):
        raise ConfigError(f"bad environment module {path!r}: give a dotted module name such as my_pkg.my_env")
    found = environments_of(import_env_module(path))
    if not found:
        raise ConfigError(
            f"environment module {path!r} defines no environment: give it a module-level "
            "ToolEnvironment (or another Environment) with a name"
        )
    return found


def _from_entry_point(entry: EntryPoint) -> dict[str, Environment]:
    origin = f"entry point {entry.name!r} ({entry.value}) of {ENTRY_POINT_GROUP}"
    try:
        obj = entry.load()
    except Exception as exc:
        raise ConfigError(f"{origin} failed to load: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, ModuleType):
        return environments_of(obj)
    env = _instantiate(obj, origin)
    if env is None:
        raise ConfigError(f"{origin} is neither a module nor an Environment")
    return {_checked(env, origin).name: env}


@functools.lru_cache(maxsize=1)
def installed_entry_points() -> tuple[EntryPoint, ...]:
    """The group's entry points, read once per process (the scan of installed metadata costs ~17 ms here)."""
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def entry_point_environments(entries: Iterable[EntryPoint] | None = None) -> dict[str, Environment]:
    """Environments of every installed `rollouts.environments` entry point."""
    found: dict[str, Environment] = {}
    for entry in installed_entry_points() if entries is None else entries:
        found.update(_from_entry_point(entry))
    return found


def user_environments(modules: Iterable[str] = ()) -> dict[str, Environment]:
    """Entry-point environments, then those of each `--env-module` (a later module may not redefine a name)."""
    found = entry_point_environments()
    seen: dict[str, str] = {}
    for path in modules:
        for name, env in load_env_module(path).items():
            if name in seen and seen[name] != path:
                raise ConfigError(f"environment {name!r} is defined by both {seen[name]!r} and {path!r}")
            seen[name] = path
            found[name] = env
    return found

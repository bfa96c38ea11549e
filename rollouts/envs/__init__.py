"""Environments: built-in verifiers and tool environments, users' modules, remote NeMo Gym resources servers.

    envs = build_environments(remote={"my_env": "http://gym:8000"}, modules=["my_pkg.my_env"])
    env = envs[row_env_name]
    session = await env.seed_session(row, http)                        # None for stateless ones
    text = await env.call_tool(name, arguments_json, http, session)    # when env.offers_tools
    env.end_session(session)                                           # the agent loop does this
    result = await env.verify(row, response, http, session)            # VerifyResult(reward, extra)

`rollouts.stages.agent.run_agent` drives the model, the tools and the session of one rollout. Never imports prefect.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from rollouts.envs.base import BuiltinEnvironment, Environment, SessionState, VerifyResult
from rollouts.envs.calculator import CalculatorEnvironment
from rollouts.envs.kv_store import KeyValueEnvironment
from rollouts.envs.loading import ENTRY_POINT_GROUP, load_env_module, user_environments
from rollouts.envs.math_env import MathEnvironment
from rollouts.envs.remote import RemoteEnvironment, complete_response, verify_extras
from rollouts.envs.text import ExactMatchEnvironment, MultipleChoiceEnvironment
from rollouts.envs.toolenv import ToolEnvironment
from rollouts.envs.tools import Tool, ToolRegistry, tool_from_function
from rollouts.errors import ConfigError, ToolError

__all__ = [
    "BUILTIN_ENVIRONMENTS",
    "ENTRY_POINT_GROUP",
    "BuiltinEnvironment",
    "CalculatorEnvironment",
    "Environment",
    "ExactMatchEnvironment",
    "KeyValueEnvironment",
    "MathEnvironment",
    "MultipleChoiceEnvironment",
    "RemoteEnvironment",
    "SessionState",
    "Tool",
    "ToolEnvironment",
    "ToolError",
    "ToolRegistry",
    "VerifyResult",
    "build_environments",
    "complete_response",
    "cookie_free_transport",
    "known_environment_names",
    "load_env_module",
    "parse_remote_env",
    "tool_from_function",
    "verify_extras",
]

BUILTIN_ENVIRONMENTS: dict[str, type[Environment]] = {
    MathEnvironment.name: MathEnvironment,
    ExactMatchEnvironment.name: ExactMatchEnvironment,
    MultipleChoiceEnvironment.name: MultipleChoiceEnvironment,
    CalculatorEnvironment.name: CalculatorEnvironment,
    KeyValueEnvironment.name: KeyValueEnvironment,
}


def _check_name(name: str, spec: str) -> str:
    name = name.strip()
    if not name or not all(ch.isalnum() or ch in "_-." for ch in name):
        raise ConfigError(
            f"bad environment name in {spec!r}: use letters, digits, '_', '-' or '.' (e.g. math_judge=http://host:8000)"
        )
    return name


def _check_url(url: str, spec: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad environment URL in {spec!r}: it must start with http:// or https:// and name a host")
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as exc:
        raise ConfigError(f"bad environment URL in {spec!r}: {exc}") from None
    return url.rstrip("/")


def parse_remote_env(spec: str) -> tuple[str, str]:
    """`"NAME=URL"` -> `(name, url)`; a ConfigError that says what is wrong otherwise."""
    name, sep, url = spec.partition("=")
    if not sep:
        raise ConfigError(f"bad environment {spec!r}: expected NAME=URL, e.g. math_judge=http://localhost:8000")
    return _check_name(name, spec), _check_url(url, spec)


def build_environments(
    remote: dict[str, str] | None = None, modules: list[str] | tuple[str, ...] = ()
) -> dict[str, Environment]:
    """Built-ins, then entry-point and `modules` environments, then one `RemoteEnvironment` per name.

    A later source replaces an earlier one's environment of the same name (a user module may redefine `math`).
    """
    envs: dict[str, Environment] = {name: cls() for name, cls in BUILTIN_ENVIRONMENTS.items()}
    envs.update(user_environments(modules))
    for name, url in (remote or {}).items():
        spec = f"{name}={url}"
        envs[_check_name(name, spec)] = RemoteEnvironment(_check_name(name, spec), _check_url(url, spec))
    return envs


def known_environment_names(
    remote: dict[str, str] | None = None, modules: list[str] | tuple[str, ...] = ()
) -> set[str]:
    """Names a row's `agent_ref.name` (or the run default) may use."""
    return set(BUILTIN_ENVIRONMENTS) | set(user_environments(modules)) | set(remote or {})


def __getattr__(name: str) -> Any:
    # aiohttp (~0.3 s to import) loads only when a client is built, not for every command's --help.
    if name == "cookie_free_transport":
        from rollouts.client.transport import cookie_free_transport

        return cookie_free_transport
    raise AttributeError(f"module 'rollouts.envs' has no attribute {name!r}")

"""Users' environments: `load_env_module`, the `rollouts.environments` entry points, and the example of
docs/environments.md."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from rollouts.client.model import ModelCall
from rollouts.envs import (
    ENTRY_POINT_GROUP,
    ToolEnvironment,
    build_environments,
    known_environment_names,
    load_env_module,
)
from rollouts.envs.loading import entry_point_environments, installed_entry_points
from rollouts.errors import ConfigError
from rollouts.stages.agent import run_agent, with_env_tools

ENVIRONMENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "environments.md"


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write modules into a fresh directory on sys.path; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            if parent != Path("."):
                (tmp_path / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name.split(".")[0])]:
            sys.modules.pop(loaded, None)


MODULE = """
from rollouts.envs import BuiltinEnvironment, ToolEnvironment, VerifyResult
from rollouts.envs.math_env import MathEnvironment   # imported classes are not this module's environments

echo = ToolEnvironment("echo_env")

@echo.tool
def shout(text: str) -> str:
    \"\"\"Upper-case the text.\"\"\"
    return text.upper()

echo.verifier(lambda row, response, state: 1.0)

class Lengthy(BuiltinEnvironment):
    name = "lengthy"
    def score(self, row, response):
        return VerifyResult(reward=0.5)

class _Hidden(BuiltinEnvironment):
    name = "hidden"
    def score(self, row, response):
        return VerifyResult(reward=0.0)

class NoName(BuiltinEnvironment):
    def score(self, row, response):
        return VerifyResult(reward=0.0)
"""


def test_a_module_registers_its_instances_and_its_own_classes(modules) -> None:
    name = modules("user_envs.tools_a", MODULE)
    found = load_env_module(name)
    assert sorted(found) == ["echo_env", "lengthy"]
    envs = build_environments(modules=[name])
    assert envs["echo_env"] is found["echo_env"] and "math" in envs and "calculator" in envs
    assert known_environment_names({"gym": "http://x"}, [name]) >= {"echo_env", "lengthy", "math", "gym"}


def test_an_instance_of_a_class_wins_over_the_class(modules) -> None:
    name = modules(
        "inst_envs",
        """
        from rollouts.envs import ToolEnvironment
        class Scored(ToolEnvironment):
            name = "scored"
            def __init__(self, level):
                super().__init__()
                self.level = level
        hard = Scored(3)
    """,
    )
    assert load_env_module(name)["scored"].level == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no environment"),
        ("raise RuntimeError('broken at import')\n", "failed to import: RuntimeError: broken at import"),
        ("import not_a_real_module_xyz\n", "No module named 'not_a_real_module_xyz'"),
        (
            "from rollouts.envs import ToolEnvironment\na = ToolEnvironment('dup')\nb = ToolEnvironment('dup')\n",
            "two environments named 'dup'",
        ),
        ("from rollouts.envs import ToolEnvironment\na = ToolEnvironment('has space')\n", "needs a `name`"),
        (
            "from rollouts.envs import ToolEnvironment\nclass Needy(ToolEnvironment):\n    name = 'needy'\n"
            "    def __init__(self, x):\n        super().__init__()\n",
            "cannot create environment Needy",
        ),
    ],
)
def test_module_problems_are_config_errors(modules, source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_env_module(modules(f"bad_env_{abs(hash(source)) % 10**8}", source))


@pytest.mark.parametrize(
    ("path", "message"),
    [("no_such_env_mod", "is it installed, or on PYTHONPATH"), ("bad path", "give a dotted module name")],
)
def test_missing_or_malformed_module_names(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_env_module(path)


def test_two_modules_may_not_define_the_same_name(modules) -> None:
    one = modules("dup_one", "from rollouts.envs import ToolEnvironment\ne = ToolEnvironment('same')\n")
    two = modules("dup_two", "from rollouts.envs import ToolEnvironment\ne = ToolEnvironment('same')\n")
    with pytest.raises(ConfigError, match="defined by both 'dup_one' and 'dup_two'"):
        build_environments(modules=[one, two])


def test_entry_points_name_a_module_or_one_environment(modules) -> None:
    name = modules("ep_envs", MODULE)
    entries = [
        EntryPoint("all_of_them", name, ENTRY_POINT_GROUP),
        EntryPoint("just_one", f"{name}:Lengthy", ENTRY_POINT_GROUP),
    ]
    assert sorted(entry_point_environments(entries)) == ["echo_env", "lengthy"]
    with pytest.raises(ConfigError, match="is neither a module nor an Environment"):
        entry_point_environments([EntryPoint("odd", "json:dumps", ENTRY_POINT_GROUP)])
    with pytest.raises(ConfigError, match="failed to load"):
        entry_point_environments([EntryPoint("gone", "no_such_pkg_xyz:Env", ENTRY_POINT_GROUP)])


def test_installed_entry_points_are_read_once() -> None:
    assert installed_entry_points() is installed_entry_points()
    assert all(entry.group == ENTRY_POINT_GROUP for entry in installed_entry_points())


def documented_example() -> tuple[str, dict[str, Any]]:
    """The module and the row of docs/environments.md's "Writing your own environment"."""
    text = ENVIRONMENTS_DOC.read_text()
    section = text.split("## Writing your own environment", 1)[1]
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    row = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    return module, row


async def test_the_documented_example_loads_and_scores_a_rollout(modules) -> None:
    source, row = documented_example()
    assert len(source.strip().splitlines()) <= 30
    name = modules("my_env", source)
    env = load_env_module(name)[row["agent_ref"]["name"]]
    assert isinstance(env, ToolEnvironment)
    params = with_env_tools({"input": row["prompt"]}, env)
    assert [tool["name"] for tool in params["tools"]] == ["add"]

    async def model(items: list[dict[str, Any]]) -> ModelCall:
        if not any(item.get("type") == "function_call_output" for item in items):
            call = {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"amount": 8}'}
            return ModelCall([call], 0, 5, "tool_calls", "r", 0)
        done = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "10"}]}
        return ModelCall([done], 0, 1, "stop", "r", 0)

    session = await env.seed_session(row)
    result = await run_agent(model, env, [{"role": "user", "content": row["prompt"]}], session=session)
    assert result.output[1]["output"] == "10" and result.end_reason == "stop"
    assert (await env.verify(row, {"output": result.output}, None, session)).reward == 1.0


def test_the_config_names_the_same_builtin_environments_as_the_registry() -> None:
    from rollouts.config import BUILTIN_ENVIRONMENT_NAMES
    from rollouts.envs import BUILTIN_ENVIRONMENTS

    assert tuple(BUILTIN_ENVIRONMENTS) == BUILTIN_ENVIRONMENT_NAMES

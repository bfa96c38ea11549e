"""Import boundaries, checked in ONE fresh interpreter: the parts of the project that run without Prefect, plotting or
the profiler never import them.

Each claim used to be its own test spawning its own interpreter (~6 s each on 2 busy cores). Here one child process
imports every module under check, claim after claim, and reports what each step left in `sys.modules` and which module
under check was being imported when a watched package was first loaded. Checking the cumulative `sys.modules` after a
step is at least as strict as a fresh interpreter per claim: whatever a claim's modules import is in it. The claims
that also forbid plotting and the profiler come first, so that a later claim that only forbids Prefect cannot make them
fail spuriously.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WALK = "every module of the rollouts package, found by walking it"


@dataclass(frozen=True)
class Claim:
    what: str
    modules: tuple[str, ...]  # WALK stands for every module of `rollouts`
    forbidden: tuple[str, ...]  # top-level packages, and any whose name starts so (prefect_dask, prefect_ray, ...)
    was: str  # the test this claim came from


CLAIMS = [
    Claim(
        "--profile off means no profiler at all",
        ("rollouts.report.profiler",),  # and `function_profile(False)` entered and left: see CHILD
        ("yappi",),
        "tests/unit/test_profiling.py::test_off_means_no_profiler_at_all",
    ),
    Claim(
        "tuning and profiling modules never import Prefect or plotting up front",
        (
            "rollouts.tune.sweep",
            "rollouts.tune.aimd",
            "rollouts.stages.profile",
            "rollouts.report.profiler",
            "rollouts.report.charts",
            "rollouts.report.metrics",
            "rollouts.report.histogram",
        ),
        ("prefect", "matplotlib", "yappi"),
        "tests/unit/test_tune_controller.py::test_tuning_and_profiling_modules_never_import_prefect_or_plotting_up_front",
    ),
    Claim(
        "the loop and tool environments never import Prefect",
        ("rollouts.stages.agent", "rollouts.envs"),
        ("prefect",),
        "tests/unit/test_agent.py::test_the_loop_and_tool_environments_never_import_prefect",
    ),
    Claim(
        "envs never import Prefect",
        ("rollouts.envs",),
        ("prefect",),
        "tests/unit/test_envs_remote.py::test_envs_never_import_prefect",
    ),
    Claim(
        "the process package never imports Prefect",
        ("rollouts.process",),
        ("prefect",),
        "tests/unit/test_process_frame.py::test_core_never_imports_prefect",
    ),
    Claim(
        "the tokens package and the sim tokenizer never import Prefect",
        ("rollouts.tokens", "rollouts.tokens.api", "commands.tokens", "rollouts.sim.bpe"),
        ("prefect",),
        "tests/unit/test_tokens_convert.py::test_the_tokens_package_and_the_sim_tokenizer_never_import_prefect",
    ),
    Claim(
        "the core never imports Prefect",
        (WALK,),
        ("prefect",),
        "tests/unit/test_core_plumbing.py::test_core_never_imports_prefect",
    ),
]

# The child: a meta-path finder that only watches (it finds nothing, so every import proceeds as usual) and notes the
# module under check being imported when a watched package is first looked for.
CHILD = r"""
import importlib, json, pkgutil, sys

WATCHED = ("prefect", "matplotlib", "yappi")


def family(name):
    top = name.split(".")[0]
    return next((w for w in WATCHED if top.startswith(w)), None)


first_loaded_by = {}
current = [None]


class Watch:
    def find_spec(self, name, path=None, target=None):
        found = family(name)
        if found and found not in first_loaded_by:
            first_loaded_by[found] = current[0]
        return None


sys.meta_path.insert(0, Watch())
claims = json.loads(sys.argv[1])
walk = sys.argv[2]
report = {"steps": [], "preloaded": sorted({f for f in map(family, sys.modules) if f})}
for index, modules in enumerate(claims):
    if walk in modules:
        import rollouts

        modules = [m.name for m in pkgutil.walk_packages(rollouts.__path__, "rollouts.")]
        modules = [m for m in modules if not m.endswith("__main__")]
        report["walked"] = len(modules)
    for module in modules:
        current[0] = module
        importlib.import_module(module)
    if index == 0:  # the profiler switched off: entering and leaving it loads nothing
        from rollouts.report.profiler import function_profile

        current[0] = "function_profile(False)"
        with function_profile(False) as profiler:
            pass
        report["profiler_off_is_none"] = profiler is None
    current[0] = None
    loaded = sorted({f for f in map(family, sys.modules) if f})
    report["steps"].append({"loaded": loaded, "by": {f: first_loaded_by.get(f) for f in loaded}})
print(json.dumps(report))
"""


def test_import_boundaries_hold_in_one_interpreter() -> None:
    assert CLAIMS[0].forbidden == ("yappi",)  # the child checks function_profile(False) right after the first step
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([c.modules for c in CLAIMS]), WALK],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["preloaded"] == [], "a watched package was loaded before any module under check"
    assert report["profiler_off_is_none"] is True, "function_profile(False) yielded a profiler"
    assert report["walked"] > 30
    assert len(report["steps"]) == len(CLAIMS)
    broken = []
    for claim, step in zip(CLAIMS, report["steps"], strict=True):
        for package in set(claim.forbidden) & set(step["loaded"]):
            broken.append(f"{claim.what} ({claim.was}): {package} was loaded, first by {step['by'][package]}")
    assert not broken, "\n".join(broken)


# What every `rollouts ... --help` and usage error pays before argparse answers: building the parsers (all of them
# at most) and parsing. The heavy packages load when a command runs, never for its parser; and the config models the
# options are generated from give their fields without building their validators (pydantic's `defer_build`).
PARSER_CHILD = r"""
import json, sys
from pydantic import BaseModel
from commands import build_parser

build_parser()
build_parser(["collect", "--help"])

def models(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from models(sub)

deferred = {m.__name__: m.__pydantic_complete__ for m in models(BaseModel) if m.model_config.get("defer_build")}
print(json.dumps({"packages": sorted({m.split(".")[0] for m in sys.modules}), "deferred": deferred}))
"""


def test_building_every_command_parser_loads_no_heavy_package_and_builds_no_config_model() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", PARSER_CHILD], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = set(report["packages"])
    heavy = {"polars", "httpx", "aiohttp", "rich", "prefect", "fsspec", "numpy", "pyarrow", "matplotlib", "yappi"}
    assert not loaded & heavy, f"a parser loads {sorted(loaded & heavy)}"
    assert {"CollectConfig", "EndpointConfig", "QualityConfig", "FilterOptions"} <= set(report["deferred"])
    built = sorted(name for name, complete in report["deferred"].items() if complete)
    assert not built, f"building the parsers built the validators of {built}"


def test_a_flow_module_builds_the_config_models_its_parameter_schemas_need() -> None:
    """The deferred config models are built before a flow's parameter schema serializes their defaults."""
    import flows.collect  # noqa: F401  (its import builds them)
    from rollouts.config import CollectConfig
    from rollouts.options import models_in

    pending = [CollectConfig]
    while pending:
        model = pending.pop()
        assert model.__pydantic_complete__, model.__name__
        pending += [sub for field in model.model_fields.values() for sub in models_in(field.annotation)]


def test_the_top_level_help_lists_every_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from commands import COMMANDS, main

    monkeypatch.setenv("COLUMNS", "400")  # one line per command

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, (_, _, help_text) in COMMANDS.items():
        assert f"{name} {help_text}" in out

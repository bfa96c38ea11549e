"""Validate JSON bodies with NeMo Gym's own pydantic models, in a Python that has nemo-gym installed.

NeMo Gym 0.7 needs Python >= 3.13 and ~1.5 GB of dependencies, so it is not a test dependency: point
`NEMO_GYM_PYTHON` at such an interpreter (CONTRIBUTING.md, "Checking against NeMo Gym") and the tests that use it run;
without it they skip and say why. Bodies go over stdin as JSON lines; one verdict per body comes back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ENV = "NEMO_GYM_PYTHON"
MODELS = {
    "verify_request": "nemo_gym.base_resources_server:BaseVerifyRequest",
    "verify_response": "nemo_gym.base_resources_server:BaseVerifyResponse",
    "run_request": "nemo_gym.base_resources_server:BaseRunRequest",
    "params": "nemo_gym.openai_utils:NeMoGymResponseCreateParamsNonStreaming",
    "response": "nemo_gym.openai_utils:NeMoGymResponse",
}
_SCRIPT = """
import importlib, json, sys
module, name = sys.argv[1].split(":")
model = getattr(importlib.import_module(module), name)
out = []
for line in sys.stdin:
    try:
        model.model_validate(json.loads(line))
        out.append(None)
    except Exception as exc:
        errors = getattr(exc, "errors", None)
        out.append([".".join(map(str, e["loc"])) + ": " + e["type"] for e in errors()] if errors else [repr(exc)])
print(json.dumps(out))
"""


def gym_python() -> str | None:
    path = os.environ.get(ENV)
    return path if path and Path(path).exists() else None


def require_gym() -> str:
    python = gym_python()
    if python is None:
        pytest.skip(
            f"NeMo Gym's models are not installed here: set {ENV} to a Python with nemo-gym 0.7 (CONTRIBUTING.md)"
        )
    return python


def gym_errors(kind: str, bodies: list[Any]) -> list[list[str] | None]:
    """NeMo Gym's validation errors for each body (None: valid)."""
    python = require_gym()
    stdin = "".join(json.dumps(b) + "\n" for b in bodies)
    done = subprocess.run(
        [python, "-c", _SCRIPT, MODELS[kind]], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"NeMo Gym validation failed to run: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])

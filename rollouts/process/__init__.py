"""The rules of the filter and format stages: read rollouts, select them for RL / SFT / DPO, write training files and
their data card (pure polars, no Prefect). `rollouts.training` composes them with the health checks and the token
records into the stages' entry points (`select`, `write_outputs`, `process`).

Names are imported on first use, so `rollouts.process.config` (which every command imports) does not load polars.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataCard": ".card",
    "DEFAULT_FORMATS": ".config",
    "FORMATS": ".config",
    "ProcessConfig": ".config",
    "TrainConfig": ".config",
    "ROLLOUT_SCHEMA": ".frame",
    "LoadedRollouts": ".readers",
    "load_rollouts": ".readers",
    "BadRows": ".validate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rollouts.process' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)

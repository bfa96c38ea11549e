"""Filter and format stages: rollouts -> RL / SFT / DPO training files with a data card (pure polars, no Prefect).

Names are imported on first use, so `rollouts.process.config` (which every command imports) does not load polars.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ProcessResult": ".api",
    "Selection": ".api",
    "load_rollouts": ".api",
    "process": ".api",
    "process_many": ".api",
    "select": ".api",
    "write_outputs": ".api",
    "DataCard": ".card",
    "DEFAULT_FORMATS": ".config",
    "FORMATS": ".config",
    "ProcessConfig": ".config",
    "TrainConfig": ".config",
    "ROLLOUT_SCHEMA": ".frame",
    "LoadedRollouts": ".readers",
    "BadRows": ".validate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rollouts.process' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)

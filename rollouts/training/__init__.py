"""Rollouts to training files: the filter and format stages' entry points, composed of the rules (`rollouts.process`),
the health checks (`rollouts.quality`) and the token records (`rollouts.tokens`), so those three never import each
other's callers.

api.py      `select` (filter stage), `write_outputs` (format stage), `process` / `process_many` (load, select, write)
convert.py  `convert_token_records`: existing rollouts to token records (`rollouts tokens`)
"""

from __future__ import annotations

from rollouts.process.config import ProcessConfig
from rollouts.process.readers import LoadedRollouts, load_rollouts
from rollouts.training.api import ProcessResult, Selection, process, process_many, select, write_outputs
from rollouts.training.convert import convert_token_records

__all__ = [
    "LoadedRollouts",
    "ProcessConfig",
    "ProcessResult",
    "Selection",
    "convert_token_records",
    "load_rollouts",
    "process",
    "process_many",
    "select",
    "write_outputs",
]

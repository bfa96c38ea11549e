"""Filter and format stages: rollouts -> RL / SFT / DPO training files with a data card (pure polars, no Prefect)."""

from .api import ProcessResult, Selection, load_rollouts, process, process_many, select, write_outputs
from .card import DataCard
from .config import DEFAULT_FORMATS, FORMATS, ProcessConfig, TrainConfig
from .frame import ROLLOUT_SCHEMA
from .readers import LoadedRollouts
from .validate import BadRows

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "ROLLOUT_SCHEMA",
    "BadRows",
    "DataCard",
    "LoadedRollouts",
    "ProcessConfig",
    "ProcessResult",
    "Selection",
    "TrainConfig",
    "load_rollouts",
    "process",
    "process_many",
    "select",
    "write_outputs",
]

"""`convert_token_records`: check and convert existing rollouts (runs, JSONL/Parquet, NeMo Gym output) to token
records."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from rollouts.errors import ConfigError
from rollouts.process.config import ProcessConfig
from rollouts.process.readers import load_rollouts
from rollouts.tokens.api import TokenRecordsResult, write_token_records
from rollouts.tokens.check import Decoder
from rollouts.training.api import select


def convert_token_records(
    inputs: Sequence[str],
    out: str,
    policy: str,
    storage_options: dict[str, Any] | None = None,
    *,
    tokenizer: Decoder | None = None,
    turn_end_id: int | None = None,
    config: ProcessConfig | None = None,
) -> TokenRecordsResult:
    """Load rollouts (runs, JSONL/Parquet, NeMo Gym output; local or fsspec), select them for RL, write token
    records."""
    config = config or ProcessConfig(objective="rl")
    if config.objective != "rl":
        raise ConfigError("token records are built from the rl selection; pass an rl ProcessConfig")
    with tempfile.TemporaryDirectory(prefix="rollouts-tokens-frame-") as work:
        loaded = load_rollouts(
            list(inputs), storage_options=storage_options, skip_bad_rows=config.skip_bad_rows, workdir=work
        )
        selection = select(loaded, config, storage_options=storage_options)
        return write_token_records(
            selection.selected(storage_options),
            loaded,
            out,
            policy,
            storage_options,
            tokenizer=tokenizer,
            turn_end_id=turn_end_id,
        )

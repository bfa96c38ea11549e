"""Token ids of multi-turn rollouts: check their contiguity and write training token records.

check.py    the contiguity check and its classes; per-run metrics (`contiguity_metrics`)
samples.py  samples per repair policy (splice | split | truncate | drop)
formats.py  the record shapes: ours, NeMo RL's message_log, verl's
api.py      `write_token_records`: the RL objective's `tokens` format from a selection
config.py   `TokensConfig`, the options of `rollouts tokens` (its command line: commands/tokens.py)

The model client reads the ids from replies (rollouts/client/token_fields.py); `convert_token_records` (existing
rollouts to token records, `rollouts tokens`) composes these with the RL selection in rollouts/training/convert.py.
"""

from __future__ import annotations

from typing import Any

from rollouts.client.token_fields import CHAT_TOKEN_REQUEST, RESPONSES_TOKEN_REQUEST
from rollouts.errors import TokenFieldsError
from rollouts.tokens.check import (
    BREAK_KINDS,
    Break,
    Call,
    ContiguityMetrics,
    RolloutCheck,
    check_calls,
    check_rollout,
    contiguity_metrics,
)
from rollouts.tokens.samples import POLICIES

__all__ = [
    "BREAK_KINDS",
    "CHAT_TOKEN_REQUEST",
    "POLICIES",
    "RESPONSES_TOKEN_REQUEST",
    "Break",
    "Call",
    "ContiguityMetrics",
    "RolloutCheck",
    "TokenFieldsError",
    "TokenRecordsResult",
    "check_calls",
    "check_rollout",
    "contiguity_metrics",
    "write_token_records",
]


def __getattr__(name: str) -> Any:
    # The writers need polars and the process package: loaded when asked for, not with the checks.
    if name in ("write_token_records", "TokenRecordsResult"):
        from rollouts.tokens import api

        return getattr(api, name)
    raise AttributeError(name)

"""The `kv_store` environment: edit a per-rollout key-value store with tools; the reward is checked on its final state.

Row keys: `initial_store` (the store each rollout starts from: an object of string keys to string values; numbers
are accepted and kept as their text) and `expected_store` (what the store must hold at the end). Tools:
`list_keys`, `get_value`, `set_value`, `delete_key`. Reward 1.0 when the final store equals `expected_store`
exactly (no key missing, none extra, every value equal), else 0.0. Extras: `store_mismatches` (how many keys are
wrong, missing or extra) and `final_store`. Bounds (keys of up to 200 characters, values of up to 10,000, at most
1,000 keys) keep a runaway rollout's state small; breaking one is a tool error the model sees.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rollouts.envs.base import VerifyResult, expected_value
from rollouts.envs.toolenv import ToolEnvironment
from rollouts.envs.tools import tool_from_function
from rollouts.errors import ToolError, VerifierError

MAX_KEY_CHARS = 200
MAX_VALUE_CHARS = 10_000
MAX_KEYS = 1000


class KeyValueStore(BaseModel):
    """One rollout's store."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, str] = {}

    @field_validator("values", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else _text(v) for k, v in value.items()}
        return value


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"store values must be strings or numbers, not {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    raise ValueError(f"store values must be strings or numbers, not {type(value).__name__}")


def _store_from(row: dict[str, Any], key: str, *, required: bool) -> dict[str, str]:
    raw = expected_value(row, "kv_store", (key,)) if required else row.get(key) or {}
    if not isinstance(raw, dict):
        raise VerifierError(f"kv_store: `{key}` must be an object of keys to values, not {type(raw).__name__}", key=key)
    try:
        return KeyValueStore(values=raw).values
    except ValidationError as exc:
        raise VerifierError(f"kv_store: bad `{key}`: {exc.errors()[0]['msg']}", key=key) from None


def _check_key(key: str) -> None:
    if not key:
        raise ToolError("the key must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise ToolError(f"keys are limited to {MAX_KEY_CHARS} characters")


def list_keys(state: KeyValueStore) -> list[str]:
    """List every key in the store, sorted."""
    return sorted(state.values)


def get_value(state: KeyValueStore, key: str) -> str:
    """Return the value stored under a key.

    Args:
        key: the key to read.
    """
    _check_key(key)
    if key not in state.values:
        raise ToolError(f"there is no key {key!r} in the store")
    return state.values[key]


def set_value(state: KeyValueStore, key: str, value: str) -> str:
    """Store a value under a key, replacing any value it had.

    Args:
        key: the key to write.
        value: the text to store.
    """
    _check_key(key)
    if len(value) > MAX_VALUE_CHARS:
        raise ToolError(f"values are limited to {MAX_VALUE_CHARS} characters")
    if key not in state.values and len(state.values) >= MAX_KEYS:
        raise ToolError(f"the store is full ({MAX_KEYS} keys)")
    state.values[key] = value
    return f"stored {key!r}"


def delete_key(state: KeyValueStore, key: str) -> str:
    """Delete a key and its value from the store.

    Args:
        key: the key to delete.
    """
    _check_key(key)
    if state.values.pop(key, None) is None:
        raise ToolError(f"there is no key {key!r} in the store")
    return f"deleted {key!r}"


KV_TOOLS = tuple(tool_from_function(f) for f in (list_keys, get_value, set_value, delete_key))  # built once


class KeyValueEnvironment(ToolEnvironment):
    """A stateful task: reach `expected_store` from `initial_store` with the store's tools."""

    name = "kv_store"
    state_type = KeyValueStore

    def __init__(self) -> None:
        super().__init__(tools=KV_TOOLS)

    def create_state(self, row: dict[str, Any]) -> KeyValueStore:
        _store_from(row, "expected_store", required=True)  # a row that cannot be scored fails before any model call
        return KeyValueStore(values=_store_from(row, "initial_store", required=False))

    def score_state(self, row: dict[str, Any], response: dict[str, Any], state: KeyValueStore) -> VerifyResult:
        expected = _store_from(row, "expected_store", required=True)
        final = state.values
        mismatches = sum(1 for key in expected.keys() | final.keys() if expected.get(key) != final.get(key))
        return VerifyResult(
            reward=1.0 if mismatches == 0 else 0.0,
            extra={"store_mismatches": mismatches, "final_store": dict(sorted(final.items()))},
        )

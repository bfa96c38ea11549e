"""Scoring one rollout with its environment: the verifier's reward and fields onto the row, or a typed failure.

Both the generate stage (in-process verifiers, as soon as a rollout ends) and the verify stage call `verify_one`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rollouts.envs import Environment, SessionState
from rollouts.errors import RolloutsError, VerifierError, typed
from rollouts.records import RESERVED_KEYS

if TYPE_CHECKING:
    import httpx

# The environment's session state travels on a generated record under this key until it is verified.
SESSION_KEY = "_session"


def verify_error(exc: BaseException) -> RolloutsError:
    """The failure of one verification, typed. A verifier that raises on a response (a malformed reply it could not
    read) is a VerifierError a new generation can fix; a row missing what its verifier needs is permanent."""
    error = typed(exc, VerifierError)
    if "missing_key" in error.context and error.retryable is None:
        error.retryable = False
    return error


async def verify_one(env: Environment, record: dict[str, Any], http: httpx.AsyncClient | None) -> dict[str, Any]:
    session_data = record.pop(SESSION_KEY, None)
    started = time.perf_counter()
    try:
        session = SessionState(**session_data) if session_data is not None else None
        result = await env.verify(record, record["response"], http, session)
        reward = float(result.reward)
    except Exception as exc:
        record.update(status="failed", reward=None, error=verify_error(exc).as_record("verify"))
    else:
        for key, value in result.extra.items():  # NeMo Gym keeps verifier fields top-level; ours stay ours
            if key not in RESERVED_KEYS:
                record[key] = value
        record["reward"] = reward
    verify_ms = (time.perf_counter() - started) * 1000
    timings = record.setdefault("timings", {})
    timings["verify_ms"] = round(verify_ms, 3)
    timings["total_ms"] = round(timings.get("queue_ms", 0) + timings.get("generate_ms", 0) + verify_ms, 3)
    return record

"""Scoring one rollout with its environment: the verifier's reward and fields onto the row, or a typed failure.

Both the generate stage (in-process verifiers, as soon as a rollout ends) and the verify stage call `verify_one`.
"""

from __future__ import annotations

import asyncio
import math
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


def verify_deadline(record: dict[str, Any], rollout_timeout: float | None) -> float | None:
    """What is left of the rollout's `--rollout-timeout` after its generation: one deadline for the verification,
    retries included (at least a second, so a rollout generated just in time is not failed unheard)."""
    if rollout_timeout is None:
        return None
    generated_s = float((record.get("timings") or {}).get("generate_ms") or 0.0) / 1000
    return max(rollout_timeout - generated_s, 1.0)


async def verify_one(
    env: Environment, record: dict[str, Any], http: httpx.AsyncClient | None, *, deadline_s: float | None = None
) -> dict[str, Any]:
    """Score `record` in place; with `deadline_s` (the rollout's `--rollout-timeout`) verification ends within what
    its generation left of it."""
    session_data = record.pop(SESSION_KEY, None)
    started = time.perf_counter()
    budget = verify_deadline(record, deadline_s)
    try:
        session = SessionState(**session_data) if session_data is not None else None
        try:
            async with asyncio.timeout(budget):
                result = await env.verify(record, record["response"], http, session)
        except TimeoutError:
            raise VerifierError(
                f"verification did not finish within the {budget:g} s the rollout had left of --rollout-timeout",
                retryable=True,
            ) from None
        reward = float(result.reward)
        if not math.isfinite(reward):  # a verifier of our own or a user module's: checked where it enters, too
            raise VerifierError(f"the verifier returned a non-finite reward ({reward!r})")
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

"""Verify stage: score every generated rollout of a shard that has no verified row yet; rewrite the shard's failures.

Verification shares the collector loop with generation, so in-process verifiers run in cooperative slices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from rollouts.envs import Environment, SessionState
from rollouts.errors import error_record
from rollouts.generate import SESSION_KEY
from rollouts.model import http_client
from rollouts.progress import ProgressBoard
from rollouts.records import RESERVED_KEYS, dumps
from rollouts.run import RunRef, ShardResult, read_records, run_store

T = TypeVar("T")


async def cooperative(items: Iterable[T], every: int = 32) -> AsyncIterator[T]:
    """Iterate, giving the event loop a turn every `every` items: verification shares the loop with generation,
    and a long CPU stretch there would hold back every response waiting to be read."""
    for index, item in enumerate(items):
        if index % every == 0:
            await asyncio.sleep(0)
        yield item


async def verify_one(env: Environment, record: dict[str, Any], http) -> dict[str, Any]:
    session_data = record.pop(SESSION_KEY, None)
    started = time.perf_counter()
    try:
        session = SessionState(**session_data) if session_data is not None else None
        result = await env.verify(record, record["response"], http, session)
    except Exception as exc:
        record.update(status="failed", reward=None, error=error_record(exc, "verify"))
    else:
        for key, value in result.extra.items():  # NeMo Gym keeps verifier fields top-level; ours stay ours
            if key not in RESERVED_KEYS:
                record[key] = value
        record["reward"] = float(result.reward)
    verify_ms = (time.perf_counter() - started) * 1000
    timings = record.setdefault("timings", {})
    timings["verify_ms"] = round(verify_ms, 3)
    timings["total_ms"] = round(timings.get("queue_ms", 0) + timings.get("generate_ms", 0) + verify_ms, 3)
    return record


async def verify_shard(run: RunRef, shard: str, *, board: ProgressBoard) -> ShardResult:
    config = run.config
    store = run_store(run)
    latest: dict[str, dict[str, Any]] = {}
    async for record in cooperative(read_records(store, "generations", f"{shard}.jsonl")):
        latest[record["rollout_id"]] = record
    result = ShardResult(shard=shard)
    verified: set[str] = set()
    async for record in cooperative(read_records(store, "rollouts", f"{shard}.jsonl")):
        verified.add(record["rollout_id"])
        result.rollouts += 1
        result.reward_sum += record.get("reward") or 0.0
    envs = config.environments.build()
    failures: list[dict[str, Any]] = [r for r in latest.values() if r["status"] != "ok"]
    todo = [r for r in latest.values() if r["status"] == "ok" and r["rollout_id"] not in verified]
    appender = store.appender("rollouts", f"{shard}.jsonl")

    def land(record: dict[str, Any]) -> None:
        if record["status"] == "ok":
            appender.write(dumps(record))
            result.rollouts += 1
            result.reward_sum += record["reward"]
            board.add(verified=1, reward=record["reward"])
        else:
            failures.append(record)
            board.add(failed=1, generated=-1)

    try:
        local = [r for r in todo if not envs[r["agent_ref"]["name"]].remote]
        remote = [r for r in todo if envs[r["agent_ref"]["name"]].remote]
        async for record in cooperative(local):  # in-process verifiers are cheap: no task per rollout, no client
            land(await verify_one(envs[record["agent_ref"]["name"]], record, None))
        if remote:
            async with http_client(config.parallel_per_process, config.endpoint.request_timeout) as http:
                queue = iter(remote)

                async def worker() -> None:
                    for record in queue:
                        land(await verify_one(envs[record["agent_ref"]["name"]], record, http))

                await asyncio.gather(*(worker() for _ in range(min(config.parallel_per_process, len(remote)))))
    finally:
        appender.commit()
    for record in failures:
        record.pop(SESSION_KEY, None)
    store.write_lines((dumps(r) for r in failures), "failures", f"{shard}.jsonl")
    result.failed = len(failures)
    return result

"""The collection loop of one shard: generate rollouts concurrently, then verify them; both resumable and append-only.

Files of a shard (the whole run layout is in the README):
    shards/<id>.jsonl        the shard's prompts (written once by the sharding stage)
    generations/<id>.jsonl   every generation outcome, appended as it finishes (the last record of a rollout wins)
    rollouts/<id>.jsonl      verified rollouts, appended as they are scored; a rollout is never written twice
    failures/<id>.jsonl      rollouts that failed (generation or verification), rewritten when the shard ends
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from rollouts.config import CollectConfig
from rollouts.envs import Environment, SessionState, build_environments
from rollouts.errors import RolloutsError, error_record
from rollouts.limits import limiter_for
from rollouts.loop import SHARED_CLIENTS
from rollouts.model import ModelCall, ModelClient, http_client
from rollouts.progress import BOARD
from rollouts.records import RESERVED_KEYS, SCHEMA_VERSION, Prompt, dumps, input_messages, loads, rollout_id
from rollouts.storage import Store

T = TypeVar("T")
SESSION_KEY = "_session"  # remote environments' session cookies, kept on generation records until verified


class RunRef(BaseModel):
    """What a shard task needs to find its run: small, so Prefect passes it cheaply."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    run_url: str
    config: CollectConfig


class ShardRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    shard: str
    prompts: int


class ShardResult(BaseModel):
    shard: str
    rollouts: int = 0
    failed: int = 0
    reward_sum: float = 0.0
    generated_now: int = 0
    verified_now: int = 0


def run_store(run: RunRef) -> Store:
    return Store(run.run_url, run.config.storage_options)


def read_records(store: Store, *parts: str) -> Iterator[dict[str, Any]]:
    for line in store.iter_lines(*parts):
        try:
            yield loads(line)
        except ValueError:
            continue  # a torn line from a crash: the rollout is simply redone


async def cooperative(items: Iterable[T], every: int = 32) -> AsyncIterator[T]:
    """Iterate, giving the event loop a turn every `every` items: verification shares the loop with generation,
    and a long CPU stretch there would hold back every response waiting to be read."""
    for index, item in enumerate(items):
        if index % every == 0:
            await asyncio.sleep(0)
        yield item


def read_prompts(store: Store, shard: str) -> list[Prompt]:
    # Validated when the shard was cut; re-validating costs ~0.1 ms a prompt on the shared loop.
    return [Prompt.model_construct(**loads(line)) for line in store.iter_lines("shards", f"{shard}.jsonl")]


def sampling_for(config: CollectConfig, params: dict[str, Any], rollout_index: int) -> dict[str, Any]:
    """Row sampling fields are defaults, options override them, the objective's preset fills what is left."""
    sampling = {k: params[k] for k in ("temperature", "top_p", "max_output_tokens") if params.get(k) is not None}
    for key, value in config.sampling_defaults().items():
        sampling.setdefault(key, value)
    sampling.update(config.sampling_overrides())
    base_seed = config.seed if config.seed is not None else params.get("seed")
    if base_seed is not None:
        sampling["seed"] = base_seed + rollout_index
    return sampling


def response_object(calls: list[ModelCall], output: list[dict[str, Any]], params: dict[str, Any], model: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """A complete Responses-API object (NeMo Gym verifiers answer 422 without every one of these fields)."""
    last = calls[-1]
    in_tokens = sum(c.input_tokens for c in calls)
    out_tokens = sum(c.output_tokens for c in calls)
    incomplete = last.finish_reason == "length"
    return {
        "id": last.response_id if last.response_id.startswith("resp") else f"resp_{last.response_id}",
        "object": "response",
        "created_at": calls[0].created_at,
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": output,
        "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens, "total_tokens": in_tokens + out_tokens},
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "tool_choice": params.get("tool_choice", "auto"),
        "tools": params.get("tools", []),
        "temperature": sampling.get("temperature"),
        "top_p": sampling.get("top_p"),
        "max_output_tokens": sampling.get("max_output_tokens"),
    }


class ShardGenerator:
    """Generates every missing rollout of one shard, at most `parallel` in flight across the whole process."""

    def __init__(self, run: RunRef, shard: str, http, envs: dict[str, Environment]) -> None:
        self.ref, self.shard, self.config = run, shard, run.config
        self.store = run_store(run)
        self.http, self.envs = http, envs
        self.client = ModelClient(http, self.config.model_url, self.config.model, self.config.api,
                                  max_retries=self.config.max_retries, return_tokens=self.config.return_tokens,
                                  rng=random.Random(f"{run.run_id}/{shard}"))
        self.limiter = limiter_for(run.run_id, self.config.parallel_per_process)

    def _todo(self, prompts: list[Prompt], done: set[str], previous: dict[str, int]) -> Iterator[tuple[Prompt, int, str, int]]:
        for prompt in prompts:
            for index in range(self.config.repeats):
                rid = rollout_id(self.ref.run_id, prompt.task_index, index)
                if rid not in done:
                    yield prompt, index, rid, previous.get(rid, 0)

    async def run(self) -> ShardResult:
        prompts = read_prompts(self.store, self.shard)
        done, previous = set(), {}
        for record in read_records(self.store, "generations", f"{self.shard}.jsonl"):
            if record.get("status") == "ok":
                done.add(record["rollout_id"])
            else:
                previous[record["rollout_id"]] = record.get("attempts", 1)
        BOARD.add(resumed=len(done))
        todo = self._todo(prompts, done, previous)
        pending = len(prompts) * self.config.repeats - len(done)
        result = ShardResult(shard=self.shard)
        if pending <= 0:
            return result
        appender = self.store.appender("generations", f"{self.shard}.jsonl")

        async def worker() -> None:
            for prompt, index, rid, prior in todo:
                record = await self._rollout(prompt, index, rid, prior)
                appender.write(dumps(record))
                ok = record["status"] == "ok"
                result.generated_now += 1
                BOARD.add(generated=int(ok), failed=int(not ok))

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.config.parallel_per_process, pending))))
        finally:
            appender.commit()
        return result

    async def _rollout(self, prompt: Prompt, index: int, rid: str, prior_attempts: int) -> dict[str, Any]:
        params = prompt.params
        sampling = sampling_for(self.config, params, index)
        env = self.envs[prompt.env]
        record: dict[str, Any] = {**prompt.row, "responses_create_params": {**params, **sampling},
                                  "_ng_task_index": prompt.task_index, "_ng_rollout_index": index, "rollout_id": rid,
                                  "schema_version": SCHEMA_VERSION}
        queued = time.perf_counter()
        await self.limiter.acquire()
        started = time.perf_counter()
        started_at = time.time()
        calls: list[ModelCall] = []
        tool_ms = 0.0
        try:
            session = await env.seed_session(prompt.row, self.http) if env.remote else None
            items = input_messages(params)
            produced: list[dict[str, Any]] = []
            for _turn in range(self.config.max_turns):
                call = await self.client.create(items + produced, params, sampling)
                calls.append(call)
                produced.extend(call.output)
                tool_calls = [item for item in call.output if item.get("type") == "function_call"]
                if not tool_calls or not env.remote:
                    break
                tool_started = time.perf_counter()
                for item in tool_calls:
                    result = await env.call_tool(item["name"], item.get("arguments") or "{}", self.http, session)
                    produced.append({"type": "function_call_output", "call_id": item.get("call_id"), "output": result})
                tool_ms += (time.perf_counter() - tool_started) * 1000
            record["response"] = response_object(calls, produced, params, self.config.model, sampling)
            record["finish_reason"] = calls[-1].finish_reason
            record["status"] = "ok"
            record["error"] = None
            if session is not None:
                record[SESSION_KEY] = dataclasses.asdict(session)
            attempts = sum(c.attempts for c in calls)
        except RolloutsError as exc:
            record.update(status="failed", error=error_record(exc, "generate"), reward=None)
            attempts = int(exc.fields.get("attempts", 1)) + sum(c.attempts for c in calls)
        except Exception as exc:  # a bad rollout is data, never a crash of its siblings
            record.update(status="failed", error=error_record(exc, "generate"), reward=None)
            attempts = 1
        finally:
            self.limiter.release()
        ended = time.perf_counter()
        record["attempts"] = prior_attempts + attempts
        record["timings"] = {"queue_ms": round((started - queued) * 1000, 3),
                             "model_ms": round(sum(c.latency_ms for c in calls), 3), "tool_ms": round(tool_ms, 3),
                             "generate_ms": round((ended - started) * 1000, 3),
                             "started_at": started_at, "finished_at": time.time()}
        return record


async def generate_shard(run: RunRef, shard: str) -> ShardResult:
    config = run.config
    envs = build_environments(config.remote_env)
    api_key = config.api_key()
    factory = lambda: http_client(config.parallel_per_process, config.request_timeout, api_key)  # noqa: E731
    async with SHARED_CLIENTS.lease(f"{run.run_id}/{config.model_url}", factory) as http:
        return await ShardGenerator(run, shard, http, envs).run()


async def _verify_one(env: Environment, record: dict[str, Any], http) -> dict[str, Any]:
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


async def verify_shard(run: RunRef, shard: str) -> ShardResult:
    """Score every generated rollout of the shard that has no verified row yet; rewrite the shard's failures."""
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
    envs = build_environments(config.remote_env)
    failures: list[dict[str, Any]] = [r for r in latest.values() if r["status"] != "ok"]
    todo = [r for r in latest.values() if r["status"] == "ok" and r["rollout_id"] not in verified]
    appender = store.appender("rollouts", f"{shard}.jsonl")

    def land(record: dict[str, Any]) -> None:
        if record["status"] == "ok":
            appender.write(dumps(record))
            result.rollouts += 1
            result.reward_sum += record["reward"]
            BOARD.add(verified=1, reward=record["reward"])
        else:
            failures.append(record)
            BOARD.add(failed=1, generated=-1)
        result.verified_now += 1

    try:
        local = [r for r in todo if not envs[r["agent_ref"]["name"]].remote]
        remote = [r for r in todo if envs[r["agent_ref"]["name"]].remote]
        async for record in cooperative(local):  # in-process verifiers are cheap: no task per rollout, no client
            land(await _verify_one(envs[record["agent_ref"]["name"]], record, None))
        if remote:
            async with http_client(config.parallel_per_process, config.request_timeout) as http:
                queue = iter(remote)

                async def worker() -> None:
                    for record in queue:
                        land(await _verify_one(envs[record["agent_ref"]["name"]], record, http))

                await asyncio.gather(*(worker() for _ in range(min(config.parallel_per_process, len(remote)))))
    finally:
        appender.commit()
    for record in failures:
        record.pop(SESSION_KEY, None)
    store.write_lines((dumps(r) for r in failures), "failures", f"{shard}.jsonl")
    result.failed = len(failures)
    return result


"""Generate stage: every missing rollout of one shard, concurrently, appended to `generations/<shard>.jsonl` as it ends.

The last record of a rollout in that file wins, so a resumed shard skips what is done and retries what failed, and
regenerates what failed verification in a way only a new generation can fix (`rollouts.stages.failures`). Each rollout
has one deadline over all its calls (`--rollout-timeout`); a stop request (`rollouts.collector.interrupt`) ends the
shard early with what finished flushed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypedDict

import httpx

from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import ModelCall, ModelClient, http_client
from rollouts.client.retry import RetryPolicy
from rollouts.collector.breaker import STOPPED, FailureBreaker
from rollouts.collector.interrupt import NEVER, StopSignal, run_until_stopped
from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.collector.runtime import CollectorRuntime, SharedClients
from rollouts.envs import Environment
from rollouts.errors import InternalError, RolloutsError, RolloutTimeout, VerifierError, typed
from rollouts.records import SCHEMA_VERSION, Prompt, ToolCallTiming, dumps, input_messages, loads, rollout_id
from rollouts.redact import option_secrets
from rollouts.run import RunRef, ShardResult, read_records, run_store
from rollouts.stages.agent import run_agent, with_env_tools
from rollouts.stages.batched import ShardBatches, batch_api, custom_id_of
from rollouts.stages.failures import resume_state
from rollouts.stages.response import response_object, sampling_for
from rollouts.stages.score import SESSION_KEY, verify_one
from rollouts.storage import Store
from rollouts.tune.control import ParallelControl

# A rollout's session (a remote environment's cookies, an in-process environment's final state), kept on generation
# records until verified.


def read_prompts(store: Store, shard: str) -> list[Prompt]:
    # Validated when the shard was cut; re-validating costs ~0.1 ms a prompt on the shared loop.
    return [Prompt.model_construct(**loads(line)) for line in store.iter_lines("shards", f"{shard}.jsonl")]


class ToolTiming(TypedDict, total=False):
    """What a rollout's tool calls took, for its `timings`."""

    tool_ms: float
    tool_calls: list[ToolCallTiming]


class ShardGenerator:
    """Generates every missing rollout of one shard; `limiter` bounds the rollouts in flight across the process."""

    def __init__(
        self,
        run: RunRef,
        shard: str,
        http: httpx.AsyncClient,
        envs: dict[str, Environment],
        limiter: InflightLimiter,
        board: ProgressBoard,
        stop: StopSignal | None = None,
        breaker: FailureBreaker | None = None,
        verify_inline: bool = False,
        batches: Callable[[ModelClient], ShardBatches] | None = None,
    ) -> None:
        self.ref, self.shard, self.config = run, shard, run.config
        self.store = run_store(run)
        self.http, self.envs, self.limiter, self.board = http, envs, limiter, board
        self.stop = stop or NEVER
        self.breaker = breaker or FailureBreaker()
        self.verify_inline = verify_inline
        self.limits = self.config.environments.limits()
        endpoint = self.config.endpoint
        self.client = ModelClient(
            http,
            endpoint.base_url,
            endpoint.model_name,
            endpoint.api,
            max_retries=endpoint.max_retries,
            return_tokens=endpoint.return_tokens,
            token_source=endpoint.token_source,
            rng=random.Random(f"{run.run_id}/{shard}"),
            request_timeout=endpoint.request_timeout,
            max_response_bytes=endpoint.max_response_bytes,
            reply_memory_bytes=endpoint.max_reply_memory_bytes,
            secrets=[*option_secrets(self.config.storage.options), *filter(None, [self.config.api_key()])],
        )
        self.rollout_timeout = endpoint.rollout_timeout
        # Batch mode: the model calls go through the provider's Batch API (rollouts/stages/batched.py).
        self.batches = batches(self.client) if batches is not None else None

    def _todo(
        self, prompts: list[Prompt], done: set[str], previous: dict[str, int]
    ) -> Iterator[tuple[Prompt, int, str, int]]:
        for prompt in prompts:
            for index in range(self.config.repeats):
                rid = rollout_id(self.ref.run_id, prompt.task_index, index)
                if rid not in done:
                    yield prompt, index, rid, previous.get(rid, 0)

    async def run(self) -> ShardResult:
        self.stop.check()
        prompts = read_prompts(self.store, self.shard)
        done, previous = resume_state(
            read_records(self.store, "generations", f"{self.shard}.jsonl"),
            read_records(self.store, "failures", f"{self.shard}.jsonl"),
        )
        done |= {r["rollout_id"] for r in read_records(self.store, "rollouts", f"{self.shard}.jsonl")}
        self.board.add(resumed=len(done))
        todo = self._todo(prompts, done, previous)
        pending = len(prompts) * self.config.repeats - len(done)
        result = ShardResult(shard=self.shard)
        if pending <= 0:
            return result
        appender = self.store.appender("generations", f"{self.shard}.jsonl")
        # With `verify_inline` (the generate stage), in-process verifiers score a rollout as soon as it is generated:
        # the progress line's reward moves with the run, and the row is written once, to rollouts/. Remote
        # environments, and what failed, are left to the verify stage.
        verified = self.store.appender("rollouts", f"{self.shard}.jsonl")

        async def keep(prompt: Prompt, record: dict[str, Any]) -> None:
            if self.breaker.record(record):
                self.store.write_json({"reason": self.breaker.reason}, STOPPED)
            env = self.envs[prompt.env]
            if self.verify_inline and record["status"] == "ok" and not env.remote:
                record = await verify_one(env, record, None)
                if record["status"] == "ok":
                    verified.write(dumps(record))
                    self.board.add(generated=1, verified=1, reward=record["reward"])
                    return
            appender.write(dumps(record))
            ok = record["status"] == "ok"
            self.board.add(generated=int(ok), failed=int(not ok))

        async def worker() -> None:
            for prompt, index, rid, prior in todo:
                if self.stop.is_set() or self.breaker.tripped:
                    return
                record = await self._rollout(prompt, index, rid, prior)
                if record is None:  # stopped while it waited for a slot
                    return
                await keep(prompt, record)

        async def workers() -> None:
            await asyncio.gather(*(worker() for _ in range(min(self.config.parallel_per_process, pending))))

        async def batched(batches: ShardBatches) -> None:
            # Every missing rollout of the shard at once: each waits on its turn's batch, not on a connection.
            rollouts = list(todo)
            batches.expect(len(rollouts))

            async def one(prompt: Prompt, index: int, rid: str, prior: int) -> None:
                try:
                    record = await self._rollout(prompt, index, rid, prior)
                finally:
                    batches.finished()
                if record is not None:
                    await keep(prompt, record)

            tasks = [asyncio.ensure_future(batches.drive()), *(asyncio.ensure_future(one(*r)) for r in rollouts)]
            try:
                await asyncio.gather(*tasks)
            finally:  # the batches could not go on (the shard fails, a re-run resumes them): nobody waits for ever
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        try:
            run_all = batched(self.batches) if self.batches is not None else workers()
            stopped, _ = await run_until_stopped(run_all, self.stop)
        finally:
            verified.commit()
            appender.commit()
        if stopped:
            self.stop.check()
        return result

    async def _rollout(self, prompt: Prompt, index: int, rid: str, prior_attempts: int) -> dict[str, Any] | None:
        env = self.envs[prompt.env]
        params = with_env_tools(prompt.params, env)  # an in-process tool environment offers its tools
        sampling = sampling_for(self.config, params, index)
        # The echoed request stays a valid NeMo Gym `responses_create_params` (which has no `seed`); the sampling
        # really sent, seed included, is the rollout's own `sampling` field.
        echoed = {**params, **{k: v for k, v in sampling.items() if k != "seed"}}
        # RolloutRow's fields beside the input row's own keys (and later the session and verifier extras): an open
        # dict, which a TypedDict cannot describe (mypy does not support PEP 728's extra_items yet).
        record: dict[str, Any] = {
            **prompt.row,
            "responses_create_params": echoed,
            "sampling": sampling,
            "_ng_task_index": prompt.task_index,
            "_ng_rollout_index": index,
            "rollout_id": rid,
            "schema_version": SCHEMA_VERSION,
        }
        queued = time.perf_counter()
        # A batched rollout holds no connection while it waits on its batch: no slot, and no deadline but the
        # batch's own completion window (--rollout-timeout bounds live calls).
        limiter = self.limiter if self.batches is None else None
        if limiter is not None:
            await limiter.acquire()
        if self.stop.is_set():
            if limiter is not None:
                limiter.release()
            return None
        started = time.perf_counter()
        started_at = time.time()
        calls: list[ModelCall] = []
        timing: ToolTiming = {"tool_ms": 0.0}
        deadline = self.rollout_timeout if self.batches is None else None
        try:
            async with asyncio.timeout(deadline):
                custom_id = custom_id_of(rid, prior_attempts)
                await self._interact(record, env, prompt, params, sampling, calls, timing, custom_id)
            attempts = sum(c.attempts for c in calls)
        except Exception as exc:  # a bad rollout is data, never a crash of its siblings
            error = self._typed(exc)
            record.update(status="failed", error=error.as_record("generate"), reward=None)
            record.pop(SESSION_KEY, None)
            attempts = int(error.attempts or 1) + sum(c.attempts for c in calls)
        finally:
            if limiter is not None:
                limiter.release()
        ended = time.perf_counter()
        if self.client.return_tokens:  # the source of every call's ids (None: no reply said, auto unsettled)
            record["token_source"] = self.client.resolved_source
        record["attempts"] = prior_attempts + attempts
        record["timings"] = {
            "queue_ms": round((started - queued) * 1000, 3),
            "model_ms": round(sum(c.latency_ms for c in calls), 3),
            "model_calls_ms": [round(c.latency_ms, 3) for c in calls],
            "tool_ms": round(timing["tool_ms"], 3),
            "generate_ms": round((ended - started) * 1000, 3),
            "started_at": started_at,
            "finished_at": time.time(),
        }
        if timing.get("tool_calls"):
            record["timings"]["tool_calls"] = timing["tool_calls"]
        return record

    async def _interact(
        self,
        record: dict[str, Any],
        env: Environment,
        prompt: Prompt,
        params: dict[str, Any],
        sampling: dict[str, Any],
        calls: list[ModelCall],
        timing: ToolTiming,
        custom_id: str,
    ) -> None:
        """Seed the session, run the agent loop (model, tools, model...), and fill the record's response."""
        batches = self.batches

        async def call_model(items: list[dict[str, Any]]) -> ModelCall:
            if batches is not None:  # the n-th call of every rollout goes in the shard's n-th batch round
                call = await batches.call(custom_id, len(calls), items, params, sampling)
            else:
                call = await self.client.create(items, params, sampling)
            calls.append(call)  # the caller's list: attempts add up even when a later call fails
            return call

        session = await env.seed_session(prompt.row, self.http)
        result = await run_agent(
            call_model, env, input_messages(params), session=session, http=self.http, limits=self.limits
        )
        timing["tool_ms"] = result.tool_ms
        timing["tool_calls"] = [{"name": name, "ms": round(ms, 3)} for name, ms in result.tool_timings]
        record["response"] = response_object(calls, result.output, params, self.config.endpoint.model_name, sampling)
        record["finish_reason"] = calls[-1].finish_reason
        record["end_reason"] = result.end_reason
        record["tool_stats"] = result.tool_record()
        record["status"] = "ok"
        record["error"] = None
        if session is not None:
            record[SESSION_KEY] = session.record()

    def _typed(self, exc: Exception) -> RolloutsError:
        if isinstance(exc, TimeoutError) and not isinstance(exc, RolloutsError):
            return RolloutTimeout(
                f"the rollout did not finish within --rollout-timeout {self.rollout_timeout:g} s "
                "(its session, model and tool calls, retries included)",
                retryable=True,
            )
        error = typed(exc, InternalError)
        status = error.status_code
        if isinstance(error, VerifierError) and error.retryable is None and isinstance(status, int):
            # An environment refusing the row at /seed_session (a 4xx) does so again on a re-run.
            error.add(retryable=RetryPolicy.retryable(status))
        return error


async def generate_shard(
    run: RunRef,
    shard: str,
    *,
    clients: SharedClients,
    limiter: InflightLimiter,
    board: ProgressBoard,
    stop: StopSignal | None = None,
    breaker: FailureBreaker | None = None,
    auth: EndpointAuth | None = None,
    control: ParallelControl | None = None,
) -> ShardResult:
    """Generate a shard on the caller's loop, with the run's warm client leased from `clients`; raises `Interrupted`
    once `stop` is requested (before it starts, or after flushing what finished). `auth` is the key and headers,
    loaded by the caller in this process (never passed between tasks). With `--parallel auto`, `control` owns the
    limiter and the client (whose transport the controller observes)."""
    (stop or NEVER).check()
    config = run.config
    envs = config.run_environments()
    auth = auth or EndpointAuth(api_key=config.api_key())

    def factory() -> httpx.AsyncClient:
        return http_client(config.parallel_per_process, config.endpoint.request_timeout, auth)

    if control is not None:
        factory, limiter = control.http_client, control.limiter
    async with clients.lease(f"{run.run_id}/{config.endpoint.model_url}", factory) as http:
        if control is not None and not control.started:
            control.start(http)
        if not config.batch.enabled:
            return await ShardGenerator(run, shard, http, envs, limiter, board, stop, breaker, verify_inline=True).run()
        async with batch_api(config, auth) as api:

            def batches(client: ModelClient) -> ShardBatches:
                metadata = {"rollouts_run": run.run_id, "rollouts_shard": shard}
                return ShardBatches(run_store(run), shard, config.batch, client, api, board, limiter, metadata)

            generator = ShardGenerator(run, shard, http, envs, limiter, board, stop, breaker, True, batches)
            return await generator.run()


def generate_with(
    runtime: CollectorRuntime, run: RunRef, shard: str, auth: EndpointAuth
) -> Coroutine[Any, Any, ShardResult]:
    """`generate_shard` on a collector runtime's parts (its clients, the run's limiter and breaker, its board and
    stop signal): the one wiring of the stage to a process, used on threads, in collector processes and on Dask
    and Ray workers. With `--parallel auto` the run's controller (one per run and process) owns limiter and client."""
    config = run.config
    control = None
    if config.concurrency.parallel == "auto":
        control = runtime.parallel_control(run.run_id, lambda: ParallelControl.for_run(config, auth))
    return generate_shard(
        run,
        shard,
        clients=runtime.clients,
        limiter=runtime.limiter(run.run_id, config.parallel_per_process),
        board=runtime.board,
        breaker=runtime.breaker(run.run_id),
        auth=auth,
        stop=runtime.stop,
        control=control,
    )


def finish_generation(runtime: CollectorRuntime, run: RunRef) -> None:
    """After the shards: stop this process's `--parallel auto` controller and write its trace for the timeline."""
    control = runtime.pop_parallel_control(run.run_id)
    if control is not None:
        runtime.run(control.stop(run_store(run)))

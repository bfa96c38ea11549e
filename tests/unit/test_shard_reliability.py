"""A shard's generate and verify stages without Prefect (the model behind httpx's MockTransport): stop requests,
per-rollout deadlines, regeneration of what failed verification, compacted generations, resume without duplicates."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from rollouts.collector.interrupt import StopSignal
from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.config import CollectConfig
from rollouts.envs import build_environments
from rollouts.envs.math_env import MathEnvironment
from rollouts.errors import Interrupted
from rollouts.inputs import prompt_line
from rollouts.records import Prompt
from rollouts.run import RunRef, read_records, run_store
from rollouts.stages.generate import ShardGenerator
from rollouts.stages.verify import verify_shard

SHARD = "00000"


def make_run(tmp_path: Path, prompts: int = 3, repeats: int = 2, **endpoint) -> RunRef:
    config = CollectConfig(
        input="p.jsonl",
        model_url="http://model/v1",
        model="m",
        num_repeats=repeats,
        parallel=4,
        out=str(tmp_path),
        **endpoint,
    )
    run = RunRef(run_id="run1", run_url=str(tmp_path / "run"), config=config)
    rows = [
        Prompt(
            task_index=i,
            line=i + 1,
            env="math",
            row={
                "responses_create_params": {"input": f"What is {i} + {i}?"},
                "expected_answer": str(2 * i),
                "agent_ref": {"name": "math"},
                "_ng_task_index": i,
            },
        )
        for i in range(prompts)
    ]
    run_store(run).write_lines([prompt_line(p) for p in rows], "shards", f"{SHARD}.jsonl")
    return run


def answer(request: httpx.Request) -> httpx.Response:
    text = json.loads(request.content)["messages"][-1]["content"]
    a = int(text.split()[2])
    return httpx.Response(
        200,
        json={
            "id": "c",
            "choices": [{"message": {"content": f"\\boxed{{{2 * a}}}"}, "finish_reason": "stop"}],
            "usage": {},
        },
    )


class Model:
    """A model behind MockTransport that counts requests and may run a hook on each one."""

    def __init__(self, hook=None) -> None:
        self.requests = 0
        self.hook = hook
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.hook:
            await self.hook(self.requests)
        await asyncio.sleep(0.01)
        return answer(request)


async def generate(run: RunRef, model: Model, stop: StopSignal | None = None, parallel: int = 4):
    generator = ShardGenerator(
        run, SHARD, model.http, build_environments(), InflightLimiter(parallel), ProgressBoard(), stop
    )
    return await generator.run()


def rows(run: RunRef, folder: str) -> list[dict]:
    return list(read_records(run_store(run), folder, f"{SHARD}.jsonl"))


async def test_a_stop_takes_no_new_rollout_lets_those_in_flight_finish_and_flushes_them(tmp_path):
    run = make_run(tmp_path, prompts=10, repeats=2)
    stop = StopSignal(grace_s=5.0)

    async def hook(n: int) -> None:
        if n == 5:
            stop.request("interrupted (SIGINT)")

    model = Model(hook)
    with pytest.raises(Interrupted, match="run the same command again"):
        await generate(run, model, stop)
    # Requests 2-5 were in flight when the 5th asked to stop: they finish and are kept; nothing new starts.
    assert model.requests == 5
    assert len(rows(run, "generations")) == 5 and all(r["status"] == "ok" for r in rows(run, "generations"))


async def test_in_flight_rollouts_past_the_grace_are_cancelled_unrecorded_and_resume_redoes_them(tmp_path):
    run = make_run(tmp_path, prompts=4, repeats=2)
    stop = StopSignal(grace_s=0.05)
    hang = asyncio.Event()

    async def hook(n: int) -> None:
        if n == 3:
            stop.request("terminated (SIGTERM)")
        if n >= 2:
            await hang.wait()  # never set: these requests outlive the grace

    limiter = InflightLimiter(4)
    model = Model(hook)
    generator = ShardGenerator(run, SHARD, model.http, build_environments(), limiter, ProgressBoard(), stop)
    with pytest.raises(Interrupted):
        await generator.run()
    assert limiter.in_flight == 0 and [r["status"] for r in rows(run, "generations")] == ["ok"]
    resumed = Model()
    await generate(run, resumed)
    assert resumed.requests == 7 and len({r["rollout_id"] for r in rows(run, "generations")}) == 8


async def test_a_rollout_past_its_deadline_fails_typed_and_retryable(tmp_path):
    run = make_run(tmp_path, prompts=1, repeats=1, rollout_timeout=0.05)

    async def slow(_n: int) -> None:
        await asyncio.sleep(5)

    await generate(run, Model(slow))
    (record,) = rows(run, "generations")
    assert record["status"] == "failed" and record["error"]["type"] == "RolloutTimeout"
    assert record["error"]["retryable"] is True and "--rollout-timeout 0.05 s" in record["error"]["message"]


async def test_a_verifier_choking_on_a_reply_is_regenerated_by_the_rerun_and_generations_are_compacted(
    tmp_path, monkeypatch
):
    run = make_run(tmp_path, prompts=3, repeats=2)
    await generate(run, Model())
    real = MathEnvironment.score
    choked: list[str] = []

    def choke_once(self, row, response):
        if not choked:
            choked.append(row["rollout_id"])
            raise TypeError("'int' object is not iterable")
        return real(self, row, response)

    monkeypatch.setattr(MathEnvironment, "score", choke_once)
    first = await verify_shard(run, SHARD, board=ProgressBoard())
    (failure,) = rows(run, "failures")
    assert (first.rollouts, first.failed) == (5, 1) and failure["rollout_id"] == choked[0]
    assert failure["error"]["type"] == "VerifierError" and failure["error"]["stage"] == "verify"
    assert failure["error"]["retryable"] is True and "TypeError" in failure["error"]["message"]
    # Verified rollouts keep one full copy, in rollouts/; generations/ keeps stubs for them.
    generations = rows(run, "generations")
    assert sum("response" not in g for g in generations) == 5 and len(generations) == 6

    rerun = Model()
    await generate(run, rerun)
    assert rerun.requests == 1  # only the rollout the verifier choked on
    second = await verify_shard(run, SHARD, board=ProgressBoard())
    verified = rows(run, "rollouts")
    assert (second.rollouts, second.failed) == (6, 0) and rows(run, "failures") == []
    assert len(verified) == 6 and len({r["rollout_id"] for r in verified}) == 6
    regenerated = next(r for r in verified if r["rollout_id"] == choked[0])
    assert regenerated["attempts"] == 2 and regenerated["reward"] == 1.0

    again = Model()
    await generate(run, again)
    await verify_shard(run, SHARD, board=ProgressBoard())
    assert again.requests == 0 and rows(run, "rollouts") == verified


async def test_a_permanent_verify_failure_is_not_regenerated(tmp_path, monkeypatch):
    run = make_run(tmp_path, prompts=1, repeats=1)
    await generate(run, Model())
    from rollouts.errors import VerifierError

    def missing(self, row, response):
        raise VerifierError("needs 'expected_answer'", missing_key="expected_answer")

    monkeypatch.setattr(MathEnvironment, "score", missing)
    await verify_shard(run, SHARD, board=ProgressBoard())
    (failure,) = rows(run, "failures")
    assert failure["error"]["retryable"] is False
    rerun = Model()
    await generate(run, rerun)
    assert rerun.requests == 0

"""The agent loop over real loopback HTTP: the simulated model server through `ModelClient`, for both APIs, with
in-process tool environments and a NeMo Gym resources server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any

import httpx
import pytest

from rollouts.client.model import ModelClient, http_client
from rollouts.envs import CalculatorEnvironment, Environment, KeyValueEnvironment, RemoteEnvironment
from rollouts.envs.calculator import calculate
from rollouts.records import input_messages
from rollouts.sim import SimConfig, serve_in_thread
from rollouts.stages.agent import MAX_TURNS, STOP, AgentLimits, AgentResult, run_agent, with_env_tools
from tests.servers.resources_server import ResourcesServerHandle, start_resources_server

pytestmark = pytest.mark.integration
APIS = ["chat", "responses"]
DEFAULT_LIMITS = AgentLimits()


def bundled(name: str) -> list[dict[str, Any]]:
    text = resources.files("rollouts").joinpath(f"data/{name}").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=11))
    yield url
    stop()


@pytest.fixture(scope="module")
def gym() -> Iterator[ResourcesServerHandle]:
    handle = start_resources_server()
    yield handle
    handle.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(16, 10.0) as client:  # the collector's own client: aiohttp transport, no cookie jar
        yield client


async def roll(
    client: ModelClient,
    env: Environment,
    row: dict[str, Any],
    http: httpx.AsyncClient,
    limits: AgentLimits = DEFAULT_LIMITS,
) -> tuple[AgentResult, Any, dict[str, Any]]:
    """One rollout as the generate stage runs it; returns the result, the session and the verifier's verdict."""
    params = with_env_tools(row["responses_create_params"], env)
    sampling = {"temperature": 0.0, "max_output_tokens": 512}
    session = await env.seed_session(row, http)
    result = await run_agent(
        lambda items: client.create(items, params, sampling),
        env,
        input_messages(params),
        session=session,
        http=http,
        limits=limits,
    )
    response = {"output": result.output, "model": "sim"}
    verdict = await env.verify({**row, "responses_create_params": params}, response, http, session)
    return result, session, verdict


def assert_every_call_answered_once(result: AgentResult) -> None:
    calls = [item["call_id"] for item in result.output if item["type"] == "function_call"]
    answered = [item["call_id"] for item in result.output if item["type"] == "function_call_output"]
    assert calls and sorted(calls) == sorted(answered) and len(set(calls)) == len(calls)


@pytest.mark.parametrize("api", APIS)
async def test_calculator_prompts_are_solved_through_the_tool(sim_url: str, http: httpx.AsyncClient, api: str) -> None:
    client = ModelClient(http, sim_url, "sim", api, max_retries=0)
    env = CalculatorEnvironment()
    rows = bundled("calculator_prompts.jsonl")
    for row in rows:
        result, session, verdict = await roll(client, env, row, http)
        assert session is None and result.end_reason == STOP and result.turns == 2
        kinds = [item["type"] for item in result.output if item["type"] != "reasoning"]
        assert kinds == ["function_call", "function_call_output", "message"]
        call = next(item for item in result.output if item["type"] == "function_call")
        output = next(item for item in result.output if item["type"] == "function_call_output")
        assert call["name"] == "calculate" and output["call_id"] == call["call_id"]
        assert output["output"] == calculate(json.loads(call["arguments"])["expression"]) == row["expected_answer"]
        assert verdict.reward == 1.0 and verdict.extra["calculator_calls"] == 1
        assert result.tools["calculate"].calls == 1 and result.tools["calculate"].errors == 0


@pytest.mark.parametrize("api", APIS)
async def test_max_turns_through_the_real_server(sim_url: str, http: httpx.AsyncClient, api: str) -> None:
    client = ModelClient(http, sim_url, "sim", api, max_retries=0)
    row = bundled("calculator_prompts.jsonl")[0]
    result, _, verdict = await roll(client, CalculatorEnvironment(), row, http, AgentLimits(max_turns=1))
    assert result.end_reason == MAX_TURNS and result.turns == 1
    assert result.output[-1]["type"] == "function_call_output" and verdict.reward == 0.0  # no final answer yet


@pytest.mark.parametrize("api", APIS)
async def test_kv_store_rollouts_keep_every_call_answered_and_score_the_final_store(
    sim_url: str, http: httpx.AsyncClient, api: str
) -> None:
    client = ModelClient(http, sim_url, "sim", api, max_retries=0)
    env = KeyValueEnvironment()
    for row in bundled("kv_store_prompts.jsonl")[:4]:
        result, session, verdict = await roll(client, env, row, http)
        assert result.end_reason == STOP and result.turns >= 2
        assert_every_call_answered_once(result)
        final = session.data["state"]["values"]
        assert verdict.extra["final_store"] == dict(sorted(final.items()))
        assert verdict.reward == float(final == row["expected_store"])


@pytest.mark.parametrize("api", APIS)
async def test_a_remote_resources_server_through_the_same_loop(
    sim_url: str, gym: ResourcesServerHandle, http: httpx.AsyncClient, api: str
) -> None:
    client = ModelClient(http, sim_url, "sim", api, max_retries=0)
    env = RemoteEnvironment("calc", gym.url, backoff=0.01)
    tool = {
        "type": "function",
        "name": "calculate",
        "description": "Evaluate arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    }
    row = {
        "responses_create_params": {"input": [{"role": "user", "content": "What is 6 * 7?"}], "tools": [tool]},
        "agent_ref": {"name": "calc"},
        "expected_answer": "42",
    }
    result, session, verdict = await roll(client, env, row, http)
    assert set(session.cookies) == {"session_id"} and result.end_reason == STOP
    output = next(item for item in result.output if item["type"] == "function_call_output")
    assert json.loads(output["output"]) == {"result": 42}
    assert (
        verdict.reward == 1.0 and verdict.extra["session_tool_calls"] == 1
    )  # the tool call hit this rollout's session

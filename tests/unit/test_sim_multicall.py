"""The simulated server following a prompt's plan over HTTP: several calls per turn, several turns, both APIs, tokens.

Requests are built and replies parsed by the collector's own client functions (rollouts/client/model.py), and the token
fields are read by the contiguity check (rollouts/tokens), so these shapes are the ones the real consumers see.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from rollouts.client.model import chat_body, parse_chat, parse_responses, responses_body
from rollouts.envs import KeyValueEnvironment
from rollouts.sim.server import SimApp, SimConfig
from rollouts.tokens import check_rollout

APIS = ["chat", "responses"]
KV_TOOLS = KeyValueEnvironment().tool_specs()  # Responses-API function tools, as the collector sends them
PLAN = (
    "Add `area` = `width` times `height`, then delete both.\n\nSteps:\n"
    '1. `get_value(key="width")` and `get_value(key="height")`\n'
    '2. `set_value(key="area", value="84")`\n'
    '3. `delete_key(key="width")` and `delete_key(key="height")`'
)
EXPECTED = [["get_value", "get_value"], ["set_value"], ["delete_key", "delete_key"]]


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    options = getattr(request, "param", {})
    async with TestClient(TestServer(SimApp(SimConfig(latency_ms=0, seed=5, **options)).app())) as test_client:
        yield test_client


async def episode(
    client: TestClient,
    api: str,
    *,
    tokens: bool = False,
    params: dict[str, Any] | None = None,
    temperature: float = 0.0,
    seed: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent loop by hand: (the raw reply bodies, the rollout's output items), tools answered with "ok"."""
    params = {"tools": KV_TOOLS, **(params or {})}
    items: list[dict[str, Any]] = [{"role": "user", "content": PLAN}]
    output: list[dict[str, Any]] = []
    bodies = []
    sampling = {"temperature": temperature, "seed": seed}
    for _ in range(8):
        build, parse, path = (
            (chat_body, parse_chat, "/v1/chat/completions")
            if api == "chat"
            else (responses_body, parse_responses, "/v1/responses")
        )
        reply = await client.post(path, json=build("m", items + output, params, sampling, tokens))
        assert reply.status == 200, await reply.text()
        body = await reply.json()
        bodies.append(body)
        call = parse(body, tokens)
        output += call.output
        function_calls = [item for item in call.output if item["type"] == "function_call"]
        if not function_calls:
            return bodies, output
        output += [
            {"type": "function_call_output", "call_id": item["call_id"], "output": "ok"} for item in function_calls
        ]
    raise AssertionError("the episode never ended")


def turns_of(output: list[dict[str, Any]]) -> list[list[str]]:
    turns: list[list[str]] = [[]]
    for item in output:
        if item["type"] == "function_call":
            turns[-1].append(item["name"])
        elif item["type"] == "function_call_output" and turns[-1]:
            turns.append([])
    return [turn for turn in turns if turn]


@pytest.mark.parametrize("api", APIS)
async def test_a_plan_is_followed_with_parallel_calls_then_a_final_text(client: TestClient, api: str) -> None:
    bodies, output = await episode(client, api)
    assert len(bodies) == 4 and turns_of(output) == EXPECTED
    calls = [item for item in output if item["type"] == "function_call"]
    assert len({item["call_id"] for item in calls}) == len(calls) == 5  # every call its own id
    assert [json.loads(item["arguments"]) for item in calls[2:3]] == [{"key": "area", "value": "84"}]
    if api == "chat":
        first = bodies[0]["choices"][0]
        assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
        assert [c["function"]["name"] for c in first["message"]["tool_calls"]] == ["get_value", "get_value"]
        assert bodies[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        kinds = [item["type"] for item in bodies[0]["output"]]
        assert kinds == ["reasoning", "function_call", "function_call"]
        assert len({item["id"] for item in bodies[0]["output"]}) == 3
    assert output[-1]["type"] == "message" and output[-1]["content"][0]["text"] == "Done: 5 tool calls in 3 turns."


@pytest.mark.parametrize("api", APIS)
async def test_token_fields_sit_on_the_last_item_of_each_call_and_the_episode_is_contiguous(
    client: TestClient, api: str
) -> None:
    bodies, output = await episode(client, api, tokens=True)
    carriers = [index for index, item in enumerate(output) if "generation_token_ids" in item]
    assert len(carriers) == len(bodies) == 4
    for index in carriers[:-1]:  # each tool turn's token fields are on its last function_call item
        assert output[index]["type"] == "function_call" and output[index + 1]["type"] == "function_call_output"
    if api == "responses":
        for body in bodies:
            assert ["prompt_token_ids" in item for item in body["output"]] == [False] * (len(body["output"]) - 1) + [
                True
            ]
    check = check_rollout({"response": {"output": output}})
    assert check is not None and check.calls == 4 and check.contiguous


@pytest.mark.parametrize("client", [{"drift_retokenize_args": True}], indirect=True)
@pytest.mark.parametrize("api", APIS)
async def test_retokenized_arguments_of_parallel_calls_break_where_they_were_generated(
    client: TestClient, api: str
) -> None:
    _, output = await episode(client, api, tokens=True)
    check = check_rollout({"response": {"output": output}})
    assert check is not None and check.calls == 4
    assert [b.call for b in check.breaks] == [1, 2, 3] and {b.region for b in check.breaks} == {"generation"}
    assert {b.kind for b in check.breaks} == {"retokenization"}


@pytest.mark.parametrize("api", APIS)
async def test_parallel_tool_calls_false_makes_one_call_per_turn(client: TestClient, api: str) -> None:
    bodies, output = await episode(client, api, params={"parallel_tool_calls": False})
    assert turns_of(output) == [[name] for turn in EXPECTED for name in turn] and len(bodies) == 6


@pytest.mark.parametrize("api", APIS)
async def test_sampled_episodes_sometimes_leave_a_call_out(client: TestClient, api: str) -> None:
    made = [turns_of((await episode(client, api, temperature=1.0, seed=seed))[1]) for seed in range(24)]
    assert EXPECTED in made and any(turns != EXPECTED for turns in made)
    assert all(len(turn) <= len(expected) for turns in made for turn, expected in zip(turns, EXPECTED, strict=False))


async def test_a_plan_names_only_offered_tools_and_without_tools_it_is_plain_text(client: TestClient) -> None:
    only_set = [tool for tool in KV_TOOLS if tool["name"] == "set_value"]
    _, output = await episode(client, "chat", params={"tools": only_set})
    assert turns_of(output) == [["set_value"]]
    reply = await client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": PLAN}]}
    )
    message = (await reply.json())["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"].startswith("Echo: ")

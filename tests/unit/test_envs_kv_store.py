"""The `kv_store` environment: its tools on a per-rollout store, state checks, and rewards on the final state."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from importlib import resources
from typing import Any

import pytest

from rollouts.client.model import ModelCall
from rollouts.envs import KeyValueEnvironment, SessionState
from rollouts.envs.tools import ToolError
from rollouts.errors import VerifierError
from rollouts.records import dumps, loads
from rollouts.stages.agent import run_agent

ROW = {"initial_store": {"apples": "3", "pears": 5}, "expected_store": {"apples": "3", "pears": "5", "total": "8"}}


async def call(env: KeyValueEnvironment, session: SessionState, name: str, **arguments: Any) -> str:
    return await env.call_tool(name, json.dumps(arguments), None, session)


async def test_tools_read_and_write_the_rollouts_own_store() -> None:
    env = KeyValueEnvironment()
    first, second = await env.seed_session(ROW), await env.seed_session(ROW)
    assert await call(env, first, "list_keys") == '["apples","pears"]'
    assert await call(env, first, "get_value", key="pears") == "5"  # numbers in the row are kept as their text
    assert await call(env, first, "set_value", key="total", value="8") == "stored 'total'"
    assert await call(env, first, "delete_key", key="apples") == "deleted 'apples'"
    assert first.live.values == {"pears": "5", "total": "8"}
    assert second.live.values == {"apples": "3", "pears": "5"}  # sessions never share a store


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("get_value", {"key": "plums"}, "there is no key 'plums'"),
        ("delete_key", {"key": "plums"}, "there is no key 'plums'"),
        ("set_value", {"key": "", "value": "x"}, "must not be empty"),
        ("set_value", {"key": "k" * 201, "value": "x"}, "limited to 200 characters"),
        ("set_value", {"key": "k", "value": "x" * 10_001}, "limited to 10000 characters"),
        ("set_value", {"key": "k"}, "value: Field required"),
    ],
)
async def test_misuse_is_a_tool_error(name: str, arguments: dict[str, Any], message: str) -> None:
    env = KeyValueEnvironment()
    session = await env.seed_session(ROW)
    with pytest.raises(ToolError, match=message):
        await call(env, session, name, **arguments)


async def test_the_store_has_a_size_limit() -> None:
    env = KeyValueEnvironment()
    session = await env.seed_session({"initial_store": {str(i): "v" for i in range(1000)}, "expected_store": {}})
    assert await call(env, session, "set_value", key="0", value="overwrite is fine") == "stored '0'"
    with pytest.raises(ToolError, match="the store is full"):
        await call(env, session, "set_value", key="new", value="x")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"initial_store": {}}, "needs 'expected_store'"),
        ({"expected_store": ["a"]}, "must be an object"),
        ({"initial_store": {"a": None}, "expected_store": {}}, "strings or numbers"),
        ({"initial_store": {"a": True}, "expected_store": {}}, "strings or numbers"),
    ],
)
async def test_rows_that_cannot_be_scored_fail_before_the_model_is_called(row: dict[str, Any], message: str) -> None:
    with pytest.raises(VerifierError, match=message):
        await KeyValueEnvironment().seed_session(row)


async def final_verdict(env: KeyValueEnvironment, row: dict[str, Any], *steps: tuple[str, dict[str, Any]]):
    session = await env.seed_session(row)
    for name, arguments in steps:
        await call(env, session, name, **arguments)
    env.end_session(session)
    return await env.verify(row, {"output": []}, None, session)


async def test_reward_is_one_only_for_the_exact_expected_store() -> None:
    env = KeyValueEnvironment()
    right = await final_verdict(env, ROW, ("set_value", {"key": "total", "value": "8"}))
    assert right.reward == 1.0 and right.extra == {"store_mismatches": 0, "final_store": ROW["expected_store"]}
    wrong = await final_verdict(
        env,
        ROW,
        ("set_value", {"key": "total", "value": "9"}),
        ("delete_key", {"key": "apples"}),
        ("set_value", {"key": "extra", "value": "1"}),
    )
    assert wrong.reward == 0.0 and wrong.extra["store_mismatches"] == 3  # wrong, missing and extra keys
    untouched = await final_verdict(env, ROW)
    assert untouched.reward == 0.0 and untouched.extra["store_mismatches"] == 1


async def test_the_final_state_survives_the_trip_through_the_generation_file() -> None:
    env = KeyValueEnvironment()
    session = await env.seed_session(ROW)
    await call(env, session, "set_value", key="total", value="8")
    env.end_session(session)
    stored = loads(dumps({"_session": dataclasses.asdict(session)}))["_session"]  # as the generate stage writes it
    restored = SessionState(**stored)
    assert restored.data == {"state": {"values": {"apples": "3", "pears": "5", "total": "8"}}}
    assert (await env.verify(ROW, {"output": []}, None, restored)).reward == 1.0
    with pytest.raises(VerifierError, match="no recorded final state"):
        await env.verify(ROW, {"output": []}, None, None)
    with pytest.raises(VerifierError, match="does not validate"):
        await env.verify(ROW, {"output": []}, None, SessionState(data={"state": {"values": 3}}))


_STEP = re.compile(r"^\d+\. (.*)$", re.MULTILINE)
_CALL = re.compile(r"`(\w+\([^`]*\))`")


def plan_of(row: dict[str, Any]) -> list[list[tuple[str, dict[str, Any]]]]:
    """The `Steps:` of a bundled prompt: one list of calls per turn (`name(key="v", ...)` in backticks)."""
    text = row["responses_create_params"]["input"][-1]["content"].split("Steps:\n", 1)[1]
    turns = []
    for line in _STEP.findall(text):
        calls = []
        for source in _CALL.findall(line):
            node = ast.parse(source, mode="eval").body
            calls.append((node.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}))
        turns.append(calls)
    return turns


def planned_model(plan: list[list[tuple[str, dict[str, Any]]]]):
    """A model that follows a plan: one turn of parallel function calls per step, then a confirmation."""

    async def model(items: list[dict[str, Any]]) -> ModelCall:
        step = sum(1 for item in items if item.get("type") == "function_call_output" and item["call_id"].endswith("_0"))
        if step < len(plan):
            output = [
                {"type": "function_call", "call_id": f"s{step}_{i}", "name": name, "arguments": json.dumps(args)}
                for i, (name, args) in enumerate(plan[step])
            ]
            return ModelCall(output, 0, 5, "tool_calls", "r", 0)
        done = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]}
        return ModelCall([done], 0, 2, "stop", "r", 0)

    return model


async def test_every_bundled_prompt_is_solved_by_following_its_steps() -> None:
    text = resources.files("rollouts").joinpath("data/kv_store_prompts.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) >= 10
    env = KeyValueEnvironment()
    turns = []
    for row in rows:
        plan = plan_of(row)
        session = await env.seed_session(row)
        result = await run_agent(planned_model(plan), env, row["responses_create_params"]["input"], session=session)
        outputs = [item["output"] for item in result.output if item["type"] == "function_call_output"]
        assert not any(text.startswith("Error") for text in outputs), outputs
        verdict = await env.verify(row, {"output": result.output}, None, session)
        assert verdict.reward == 1.0, (row["expected_store"], verdict.extra)
        turns.append(result.turns)
    assert max(turns) == 4 and any(len(step) > 1 for row in rows for step in plan_of(row))  # 4 turns, parallel calls

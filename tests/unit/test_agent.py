"""The agent loop against a scripted model: tool round trips, tool errors and timeouts, concurrency, end reasons."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from rollouts.client.model import ModelCall
from rollouts.envs import CalculatorEnvironment, KeyValueEnvironment, MathEnvironment, ToolEnvironment, ToolError
from rollouts.errors import ConfigError, ModelOutputError, ProviderError
from rollouts.stages.agent import (
    DEADLINE,
    LENGTH,
    MAX_ROLLOUT_TOKENS,
    MAX_TURNS,
    NO_TOOLS,
    STOP,
    UNPARSEABLE_OUTPUT,
    AgentLimits,
    run_agent,
    with_env_tools,
)

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def fcall(name: str, arguments: dict[str, Any] | str, call_id: str | None = "auto") -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    item = {"type": "function_call", "name": name, "arguments": args}
    if call_id is not None:
        item["call_id"] = f"c_{name}_{id(item)}" if call_id == "auto" else call_id
    return item


def turn(*items: dict[str, Any], finish: str | None = None, tokens: int = 5) -> ModelCall:
    reason = finish or ("tool_calls" if any(i["type"] == "function_call" for i in items) else "stop")
    return ModelCall(
        output=list(items), input_tokens=10, output_tokens=tokens, finish_reason=reason, response_id="r", created_at=0
    )


class Script:
    """A model that plays `turns` in order (a callable turn sees the items it was sent); it records what it saw."""

    def __init__(self, *turns: ModelCall | Callable[[list[dict[str, Any]]], Any]) -> None:
        self.turns = list(turns)
        self.seen: list[list[dict[str, Any]]] = []

    async def __call__(self, items: list[dict[str, Any]]) -> ModelCall:
        self.seen.append(copy.deepcopy(items))
        step = self.turns[min(len(self.seen), len(self.turns)) - 1]
        result = step(items) if callable(step) else step
        return await result if asyncio.iscoroutine(result) else copy.deepcopy(result)


def outputs(result) -> list[str]:
    return [item["output"] for item in result.output if item["type"] == "function_call_output"]


async def test_tool_round_trip_ends_with_stop_and_feeds_outputs_back() -> None:
    model = Script(turn(fcall("calculate", {"expression": "2 + 3"}, "c1")), turn(message("It is \\boxed{5}.")))
    result = await run_agent(model, CalculatorEnvironment(), PROMPT)
    assert result.end_reason == STOP and result.turns == 2
    assert [i["type"] for i in result.output] == ["function_call", "function_call_output", "message"]
    assert result.output[1] == {"type": "function_call_output", "call_id": "c1", "output": "5"}
    assert model.seen[1] == PROMPT + result.output[:2]  # the second call sees the call and its output
    assert result.tools["calculate"].calls == 1 and result.tools["calculate"].errors == 0
    assert result.output_tokens == 10


async def test_tool_errors_become_outputs_and_the_rollout_goes_on() -> None:
    env = ToolEnvironment("faulty")

    @env.tool
    def boom() -> str:
        """Always fails."""
        raise ValueError("boom")

    @env.tool
    async def refuse(reason: str) -> str:
        """Fails politely."""
        raise ToolError(f"refused: {reason}")

    calls = [
        fcall("boom", {}),
        fcall("refuse", {"reason": "no"}),
        fcall("nope", {}),
        fcall("refuse", "{not json"),
        fcall("refuse", {"reason": 3, "extra": 1}),
    ]
    model = Script(turn(*calls), turn(message("I give up.")))
    result = await run_agent(model, env, PROMPT)
    assert result.end_reason == STOP and result.turns == 2
    texts = outputs(result)
    assert texts[0] == "Error: ValueError: boom"
    assert texts[1] == "Error: refused: no"
    assert texts[2].startswith("Error: there is no tool named 'nope' (available: boom, refuse)")
    assert texts[3].startswith("Error: the arguments of refuse are not valid JSON")
    assert "reason: Input should be a valid string" in texts[4] and "extra: Extra inputs are not permitted" in texts[4]
    assert result.tools["refuse"].errors == 3 and result.tools["boom"].errors == 1 and result.tools["nope"].calls == 1
    record = result.tool_record()
    assert set(record) == {"boom", "refuse", "nope"}
    assert {k: v for k, v in record["refuse"].items() if not k.endswith("_ms")} == {
        "calls": 3,
        "errors": 3,
        "timeouts": 0,
    }
    assert [o["call_id"] for o in result.output[5:10]] == [c["call_id"] for c in calls]


async def test_a_tool_that_hangs_times_out_and_the_model_sees_it() -> None:
    env = ToolEnvironment("slow")

    @env.tool
    async def wait_forever() -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return "unreachable"

    @env.tool
    def quick() -> str:
        """Answers at once."""
        return "fine"

    model = Script(turn(fcall("wait_forever", {}), fcall("quick", {})), turn(message("done")))
    result = await run_agent(model, env, PROMPT, limits=AgentLimits(tool_timeout_s=0.02))
    assert outputs(result) == ["Error: wait_forever timed out after 0.02 s", "fine"]
    assert result.end_reason == STOP and result.turns == 2
    assert result.tools["wait_forever"].timeouts == 1 and result.tools["quick"].timeouts == 0


async def test_a_tools_own_timeout_applies() -> None:
    env = ToolEnvironment("slow")

    @env.tool(timeout=0.01)
    async def hang() -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return ""

    result = await run_agent(Script(turn(fcall("hang", {})), turn(message("ok"))), env, PROMPT)
    assert outputs(result) == ["Error: hang timed out after 0.01 s"]


async def test_parallel_calls_of_one_turn_run_concurrently_and_outputs_keep_call_order() -> None:
    env = ToolEnvironment("rendezvous")
    log: list[str] = []
    arrived = {"a": asyncio.Event(), "b": asyncio.Event()}

    @env.tool
    async def meet(me: str, other: str) -> str:
        """Waits until the other call has started: only concurrent calls can both finish."""
        log.append(f"start {me}")
        arrived[me].set()
        await arrived[other].wait()
        if me == "a":
            await asyncio.sleep(0)  # let b finish first: outputs must still follow call order
        log.append(f"end {me}")
        return me

    model = Script(
        turn(fcall("meet", {"me": "a", "other": "b"}), fcall("meet", {"me": "b", "other": "a"})), turn(message("met"))
    )
    # Run sequentially, the first call would wait for ever: the safety timeout would then show in its output.
    result = await run_agent(model, env, PROMPT, limits=AgentLimits(tool_timeout_s=5))
    assert outputs(result) == ["a", "b"]
    assert log[:2] == ["start a", "start b"] and log[2:] == ["end b", "end a"]


async def test_max_turns_ends_after_the_last_turns_tools_ran() -> None:
    model = Script(lambda items: turn(fcall("calculate", {"expression": f"{len(items)} * 2"})))
    result = await run_agent(model, CalculatorEnvironment(), PROMPT, limits=AgentLimits(max_turns=3))
    assert result.end_reason == MAX_TURNS and result.turns == 3 and len(model.seen) == 3
    assert outputs(result) == ["2", "6", "10"]  # every call answered, including the last turn's
    assert result.output[-1]["type"] == "function_call_output"


async def test_max_rollout_tokens_stops_before_the_next_call() -> None:
    model = Script(turn(fcall("calculate", {"expression": "1+1"}), tokens=10))
    result = await run_agent(model, CalculatorEnvironment(), PROMPT, limits=AgentLimits(max_rollout_tokens=25))
    assert result.end_reason == MAX_ROLLOUT_TOKENS and result.turns == 3 and result.output_tokens == 30


async def test_deadline_during_a_model_call_keeps_what_finished() -> None:
    async def hang(items: list[dict[str, Any]]) -> ModelCall:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    model = Script(turn(fcall("calculate", {"expression": "1+1"})), hang)
    result = await run_agent(model, CalculatorEnvironment(), PROMPT, limits=AgentLimits(timeout_s=0.05))
    assert result.end_reason == DEADLINE and result.turns == 1 and outputs(result) == ["2"]


async def test_deadline_during_tools_answers_every_call() -> None:
    env = ToolEnvironment("slow")

    @env.tool
    async def hang() -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return ""

    @env.tool
    def quick() -> str:
        """Answers at once."""
        return "fine"

    model = Script(turn(fcall("quick", {}), fcall("hang", {})), turn(message("never asked")))
    result = await run_agent(model, env, PROMPT, limits=AgentLimits(timeout_s=0.05))
    assert result.end_reason == DEADLINE and result.turns == 1 and len(model.seen) == 1
    assert outputs(result) == ["fine", "Error: the rollout's time ran out before hang finished"]
    assert result.tools["hang"].errors == 1


async def test_deadline_before_any_answer_is_a_provider_error() -> None:
    async def hang(items: list[dict[str, Any]]) -> ModelCall:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(ProviderError, match="no model call finished within the rollout's 0.02 s"):
        await run_agent(hang, CalculatorEnvironment(), PROMPT, limits=AgentLimits(timeout_s=0.02))


async def test_length_ends_without_running_the_cut_calls() -> None:
    model = Script(turn(fcall("calculate", '{"expression": "1+'), finish="length"))
    result = await run_agent(model, CalculatorEnvironment(), PROMPT)
    assert result.end_reason == LENGTH and outputs(result) == [] and result.tools == {}


async def test_a_verifier_only_environment_ends_at_the_first_function_call() -> None:
    result = await run_agent(Script(turn(fcall("calculate", {"expression": "1"}))), MathEnvironment(), PROMPT)
    assert result.end_reason == NO_TOOLS and result.turns == 1 and outputs(result) == []


async def test_other_finish_reasons_are_the_end_reason() -> None:
    result = await run_agent(Script(turn(message(""), finish="content_filter")), CalculatorEnvironment(), PROMPT)
    assert result.end_reason == "content_filter"


async def test_missing_call_ids_are_filled_so_outputs_point_at_their_calls() -> None:
    model = Script(
        turn(fcall("calculate", {"expression": "1+1"}, None), fcall("calculate", {"expression": "2"}, None)),
        turn(message("2")),
    )
    result = await run_agent(model, CalculatorEnvironment(), PROMPT)
    ids = [item["call_id"] for item in result.output[:2]]
    assert ids == ["call_1_0", "call_1_1"] and [o["call_id"] for o in result.output[2:4]] == ids


async def test_a_failed_model_call_raises_and_still_ends_the_session() -> None:
    async def fail(items: list[dict[str, Any]]) -> ModelCall:
        raise ProviderError("HTTP 500", status_code=500)

    env = KeyValueEnvironment()
    session = await env.seed_session({"initial_store": {"a": "1"}, "expected_store": {}})
    with pytest.raises(ProviderError):
        await run_agent(fail, env, PROMPT, session=session)
    assert session.live is None and session.data["state"] == {"values": {"a": "1"}}


class Counter(BaseModel):
    value: int = 0


def unreadable(items: list[dict[str, Any]]) -> ModelCall:
    raise ModelOutputError("HTTP 500: The model produced output that does not match the expected format")


async def test_a_reply_the_server_cannot_read_ends_the_rollout_keeping_what_came_before() -> None:
    model = Script(turn(fcall("calculate", {"expression": "2 + 3"}, "c1")), unreadable)
    result = await run_agent(model, CalculatorEnvironment(), PROMPT)
    assert result.end_reason == UNPARSEABLE_OUTPUT and result.turns == 1 and len(model.seen) == 2
    assert [i["type"] for i in result.output] == ["function_call", "function_call_output"]


async def test_a_first_reply_the_server_cannot_read_fails_the_rollout() -> None:
    ended = []
    env = CalculatorEnvironment()
    env.end_session = lambda session: ended.append(session)  # type: ignore[method-assign]
    with pytest.raises(ModelOutputError):
        await run_agent(Script(unreadable), env, PROMPT)
    assert ended == [None]


async def test_state_changed_by_tools_is_snapshotted_for_the_verifier() -> None:
    env = ToolEnvironment("counter", state=Counter, create_state=lambda row: Counter(value=row["start"]))

    @env.tool
    def add(state: Counter, amount: int) -> int:
        """Add to the counter."""
        state.value += amount
        return state.value

    @env.verifier
    def reached(row: dict[str, Any], response: dict[str, Any], state: Counter) -> float:
        return float(state.value == row["target"])

    row = {"start": 1, "target": 6}
    session = await env.seed_session(row)
    model = Script(turn(fcall("add", {"amount": 2}), fcall("add", {"amount": 3})), turn(message("6")))
    result = await run_agent(model, env, PROMPT, session=session)
    assert outputs(result) == ["3", "6"] and session.data == {"state": {"value": 6}} and session.live is None
    verdict = await env.verify(row, {"output": result.output}, None, session)
    assert verdict.reward == 1.0


class TaskPathKeyValue(KeyValueEnvironment):
    """The kv_store environment with a call_tool of its own: the agent loop then runs each call as a task."""

    async def call_tool(self, name: str, arguments: str, http: Any, session: Any) -> str:
        return await super().call_tool(name, arguments, http, session)


async def test_sync_tools_called_inline_give_what_the_task_per_call_path_gives() -> None:
    row = {"initial_store": {"a": "2", "b": "3"}, "expected_store": {"c": "6"}}
    calls = [
        fcall("get_value", {"key": "a"}, "c1"),
        fcall("get_value", {"key": "missing"}, "c2"),
        fcall("set_value", {"key": "c", "value": "6"}, "c3"),
        fcall("delete_key", "{not json", "c4"),
        fcall("delete_key", {"key": 3, "extra": 1}, "c5"),
        fcall("no_such_tool", {}, "c6"),
    ]
    script = (turn(*calls), turn(fcall("delete_key", {"key": "a"}, "c7"), fcall("delete_key", {"key": "b"}, "c8")))
    results, awaited = [], []
    for env in (KeyValueEnvironment(), TaskPathKeyValue()):
        call_tool = env.call_tool

        async def counted(*args: Any, call_tool: Any = call_tool) -> str:
            awaited.append(args[0])
            return await call_tool(*args)

        env.call_tool = counted  # type: ignore[method-assign]
        session = await env.seed_session(row)
        result = await run_agent(Script(*script, turn(message("done"))), env, PROMPT, session=session)
        results.append((result, session))
    (inline, inline_session), (tasks, tasks_session) = results
    assert KeyValueEnvironment().runs_inline("get_value") and not TaskPathKeyValue().runs_inline("get_value")
    assert not KeyValueEnvironment().runs_inline("no_such_tool")  # such a turn goes through call_tool
    assert inline.output == tasks.output and inline.end_reason == tasks.end_reason == STOP
    # The first turn names an unknown tool, so both run it as tasks; the second runs inline in the first loop only.
    names = [c["name"] for c in calls]
    assert awaited == names + names + ["delete_key"] * 2
    assert outputs(inline)[0] == "2" and outputs(inline)[3].startswith("Error: the arguments of delete_key")
    assert [name for name, _ in inline.tool_timings] == [name for name, _ in tasks.tool_timings]
    counts = [
        {n: {k: v for k, v in s.items() if not k.endswith("_ms")} for n, s in r.tool_record().items()}
        for r, _ in results
    ]
    assert counts[0] == counts[1] and counts[0]["delete_key"] == {"calls": 4, "errors": 2, "timeouts": 0}
    assert inline_session.data == tasks_session.data


def test_env_tools_join_the_request_only_when_the_row_has_none() -> None:
    env = CalculatorEnvironment()
    assert [t["name"] for t in with_env_tools({"input": "q"}, env)["tools"]] == ["calculate"]
    assert [t["name"] for t in with_env_tools({"input": "q", "tools": []}, env)["tools"]] == ["calculate"]
    own = {"input": "q", "tools": [{"type": "function", "name": "search", "parameters": {}}]}
    assert with_env_tools(own, env) is own
    assert with_env_tools({"input": "q"}, MathEnvironment()) == {"input": "q"}


@pytest.mark.parametrize("bad", [{"max_turns": 0}, {"max_rollout_tokens": 0}, {"timeout_s": 0}, {"tool_timeout_s": -1}])
def test_limits_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AgentLimits(**bad)

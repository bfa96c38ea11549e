"""Our rows and requests against NeMo Gym's request models: the test resources server's own validation always, and
NeMo Gym 0.7's real models when NEMO_GYM_PYTHON points at a Python that has them (CONTRIBUTING.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rollouts.envs.remote import complete_response, gym_row, gym_usage
from tests.gym.models import gym_errors
from tests.servers.gym_schema import seed_errors, verify_errors

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOOL = {
    "type": "function",
    "name": "calculate",
    "description": "Arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    "strict": None,
}
INPUT_ROW = {
    "responses_create_params": {"input": [{"role": "user", "content": "6 * 7?"}], "tools": [TOOL], "temperature": 0.7},
    "agent_ref": {"name": "calc"},
    "expected_answer": "42",
}
RESPONSE = {
    "id": "resp_1", "created_at": 1767225600, "model": "policy", "object": "response", "status": "completed",
    "output": [
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "calculate",
         "arguments": '{"expression":"6*7"}', "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"result": 42}'},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "42", "annotations": []}]},
    ],
    "usage": gym_usage(30, 12), "parallel_tool_calls": True, "tool_choice": "auto", "tools": [TOOL],
}  # fmt: skip


def rollout_row(*, seed_in_params: bool = False, bare_usage: bool = False) -> dict[str, Any]:
    """A rollout row as the collector stores it: the input row's `responses_create_params` as it was, the sampling
    used under `sampling`, a complete `response` with usage details, and our bookkeeping."""
    params = dict(INPUT_ROW["responses_create_params"])
    if seed_in_params:
        params.update(temperature=1.0, seed=7)  # the old way: sampling merged into the echoed params
    response = copy.deepcopy(RESPONSE)
    if bare_usage:
        response["usage"] = {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42}
    return {
        **INPUT_ROW, "responses_create_params": params, "sampling": {"temperature": 1.0, "seed": 7},
        "_ng_task_index": 0, "_ng_rollout_index": 0, "response": response, "reward": 1.0, "rollout_id": "r0",
        "status": "ok", "error": None, "attempts": 1, "finish_reason": "stop", "timings": {"total_ms": 1.0},
        "schema_version": 1,
    }  # fmt: skip


BODIES: dict[str, tuple[dict[str, Any], bool]] = {
    "rollout row (new)": (rollout_row(), True),
    "seed in params": (rollout_row(seed_in_params=True), False),
    "usage without details": (rollout_row(bare_usage=True), False),
    "tool without strict": ({**rollout_row(), "responses_create_params": {
        **INPUT_ROW["responses_create_params"], "tools": [{k: v for k, v in TOOL.items() if k != "strict"}]}}, False),
    "response without id": ({**rollout_row(), "response": {k: v for k, v in RESPONSE.items() if k != "id"}}, False),
    "output_text without annotations": ({**rollout_row(), "response": {**RESPONSE, "output": [
        {"type": "message", "id": "m", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "42"}]}]}}, False),
    "function_call without call_id": ({**rollout_row(), "response": {**RESPONSE, "output": [
        {"type": "function_call", "name": "calculate", "arguments": "{}"}]}}, False),
    "image input": ({**rollout_row(), "responses_create_params": {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "colour?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA==", "detail": "auto"}]}]}}, True),
    "image without detail": ({**rollout_row(), "responses_create_params": {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]}}, False),
    "instructions and input []": (
        {**rollout_row(), "responses_create_params": {"input": [], "instructions": "Be brief."}}, True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BODIES))
def test_test_server_validates_like_nemo_gym(name: str) -> None:
    body, valid = BODIES[name]
    assert (verify_errors(body) == []) is valid, verify_errors(body)


def test_what_the_remote_environment_sends_is_valid() -> None:
    old_row = rollout_row(seed_in_params=True, bare_usage=True)
    assert verify_errors(old_row) != []
    sent = {**gym_row(old_row), "response": complete_response(old_row["response"], old_row)}
    assert verify_errors(sent) == [] and "seed" not in sent["responses_create_params"]
    assert not {"rollout_id", "status", "timings", "sampling", "schema_version"} & set(sent)
    assert (
        seed_errors(gym_row(old_row)) == []
        and seed_errors({"responses_create_params": {"input": "x", "seed": 1}}) != []
    )


def test_nemo_gym_agrees_with_the_test_server() -> None:
    names = list(BODIES)
    verdicts = gym_errors("verify_request", [BODIES[n][0] for n in names])
    for name, errors in zip(names, verdicts, strict=True):
        assert (errors is None) is BODIES[name][1], (name, errors)
        assert (errors is None) is (verify_errors(BODIES[name][0]) == []), (
            name
        )  # at least as strict, and no stricter here


def test_rollout_row_built_the_new_way_is_a_nemo_gym_verify_response() -> None:
    assert gym_errors("verify_response", [rollout_row()]) == [None]
    assert gym_errors("verify_response", [rollout_row(seed_in_params=True)]) != [None]


def test_fixtures_are_real_nemo_gym_rows() -> None:
    def rows(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    rollouts = rows(FIXTURES / "gym_out" / "rollouts.jsonl") + rows(FIXTURES / "process" / "gym.jsonl")
    assert gym_errors("verify_response", rollouts) == [None] * len(rollouts)
    inputs = rows(FIXTURES / "gym_out" / "rollouts_materialized_inputs.jsonl")
    assert gym_errors("run_request", inputs) == [None] * len(inputs)

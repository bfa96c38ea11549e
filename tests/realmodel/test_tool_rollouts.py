"""Tool rollouts through the real flow against llama-server with a tool-aware template (Qwen2.5's, `llama_tool_server`):
the environment's tools go out in the form it accepts, the model's own calls come back parsed, the tool outputs go
back to it, and a call the tool cannot take becomes an error output the rollout survives.

SmolLM2-135M does not call tools from a bare question; one earlier exchange in the prompt (a question and the call it
got) is enough for it to call `get_weather` itself, at temperature 0. llama.cpp constrains a call the model starts to
the declared schema (a grammar), so a call that breaks the tool's own signature comes from a row that declares the
tool differently from the environment (`town` for `city`), as a dataset whose tool list drifted from its environment
would; a reply the server's parser cannot read never reaches the client (an HTTP 500, pinned in
test_llama_contract.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import run_rows, write_jsonl
from tests.realmodel.conftest import MODEL

ENV_MODULE = "tests.realmodel.weather_env"


def _row(ask: str, city: str, earlier: dict[str, str], tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    call = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(earlier)}}
    shot = [
        {"role": "user", "content": "What is the weather in London?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "user", "content": ask},
    ]
    params: dict[str, Any] = {"input": shot}
    if tools is not None:
        params["tools"] = tools
    return {"responses_create_params": params, "agent_ref": {"name": "weather"}, "city": city}


TOWN_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a town.",
    "parameters": {
        "type": "object",
        "properties": {"town": {"type": "string"}},
        "required": ["town"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def tool_rows(
    llama_tool_server: str, prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    base = tmp_path_factory.mktemp("tools")
    src = write_jsonl(
        base / "weather.jsonl",
        [
            _row("What is the weather in Paris?", "Paris", {"city": "London"}),
            _row("What is the weather in Paris?", "Paris", {"town": "London"}, tools=[TOWN_TOOL]),
        ],
    )
    result = rollouts(
        "collect", str(src), "--model-url", llama_tool_server, "--model", MODEL, "--env-module", ENV_MODULE,
        "--num-repeats", "1", "--temperature", "0", "--max-output-tokens", "64", "--max-turns", "2",
        "--out", str(base / "runs"), "--run-name", "tools", "--no-progress", api_url=prefect_server,
    )  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    rows = run_rows(base / "runs" / "tools", "rollouts")
    return {row["responses_create_params"].get("tools", [{}])[0].get("description", "env"): row for row in rows}


def _items(row: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item for item in row["response"]["output"] if item.get("type") == kind]


def test_the_models_own_call_runs_the_tool_and_its_output_goes_back(tool_rows: dict[str, dict[str, Any]]) -> None:
    row = tool_rows["Current weather in a city."]
    assert row["status"] == "ok"
    [call] = _items(row, "function_call")
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    [output] = _items(row, "function_call_output")
    assert output["call_id"] == call["call_id"] and output["output"] == "sunny, 21 C in Paris"
    assert row["tool_stats"]["get_weather"]["calls"] == 1 and row["tool_stats"]["get_weather"]["errors"] == 0
    assert row["reward"] == 1.0
    # the output went back to the server: a second model call was made with it, and billed for it
    assert len(row["timings"]["model_calls_ms"]) == 2, row


def test_a_call_the_tool_cannot_take_is_an_error_output_the_rollout_survives(
    tool_rows: dict[str, dict[str, Any]],
) -> None:
    row = tool_rows["Current weather in a town."]
    assert row["status"] == "ok"
    [call] = _items(row, "function_call")
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"town": "Paris"}
    [output] = _items(row, "function_call_output")
    assert output["output"].startswith("Error:") and "city" in output["output"], output
    assert row["tool_stats"]["get_weather"]["errors"] == 1
    assert row["reward"] == 0.0
    assert len(row["timings"]["model_calls_ms"]) == 2, row

"""Tool rollouts through the real flow against llama-server with a tool-aware template (Qwen2.5's, `llama_tool_server`):
the environment's tools go out in the form it accepts, the model's own calls come back parsed, the tool outputs go
back to it, and a call the tool cannot take becomes an error output the rollout survives.

SmolLM2-135M does not call tools from a bare question; one earlier exchange in the prompt (a question and the call it
got) is enough for it to call `get_weather` itself, at temperature 0. llama.cpp constrains a call the model starts to
the declared schema (a grammar), so a call that breaks the tool's own signature comes from a row that declares the
tool differently from the environment (`town` for `city`), as a dataset whose tool list drifted from its environment
would. A reply the server's parser cannot read never reaches the client (an HTTP 500, pinned in
test_llama_contract.py): the rollout fails once, typed as the model's fault, instead of retrying the same text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import run_rows, write_jsonl
from tests.realmodel.conftest import ENV_MODULE, MODEL


@pytest.fixture(scope="module")
def tool_rows(tool_run: Path) -> dict[str, dict[str, Any]]:
    """The run's two rollouts by the description of the tool the model was sent."""
    rows = run_rows(tool_run, "rollouts")
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


def test_a_reply_the_server_cannot_read_fails_its_rollout_once_typed(
    llama_tool_server: str, prefect_server: str, tmp_path: Path
) -> None:
    """The prompt ends with the start of a call (an assistant prefill, as in test_llama_contract.py): the model
    finishes it and writes on past `</tool_call>`, which llama.cpp's parser refuses with an HTTP 500. That is the
    model's output, not the server failing: one request, no retries, a typed failure the run counts."""
    prefill = {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'}
    row = {
        "responses_create_params": {"input": [{"role": "user", "content": "What is the weather in Paris?"}, prefill]},
        "agent_ref": {"name": "weather"},
        "city": "Paris",
    }
    src = write_jsonl(tmp_path / "prefill.jsonl", [row])
    result = rollouts(
        "collect", str(src), "--model-url", llama_tool_server, "--model", MODEL, "--env-module", ENV_MODULE,
        "--num-repeats", "1", "--temperature", "0", "--max-output-tokens", "24", "--max-failure-fraction", "1",
        "--out", str(tmp_path / "runs"), "--run-name", "prefill", "--no-progress", api_url=prefect_server,
    )  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    run = tmp_path / "runs" / "prefill"
    assert run_rows(run, "rollouts") == []
    [failed] = run_rows(run, "failures")
    error = failed["error"]
    assert error["type"] == "ModelOutputError" and error["status_code"] == 500, error
    assert "does not match the expected" in error["message"]
    assert error["retryable"] is False and error["attempts"] == 1 and failed["attempts"] == 1

"""The real-model tier: llama.cpp's `llama-server` with SmolLM2-135M-Instruct on CPU, started once per test session.

Nothing here skips: without the built binary every test of the tier fails with the command that builds it
(`python -m tests.servers.llama build`, once per machine; the files are cached outside the repository).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import write_jsonl
from tests.servers import llama

TEMPLATES = Path(__file__).resolve().parent.parent / "fixtures" / "chat_templates"
# Qwen2.5-Instruct's template (as llama.cpp keeps it in models/templates/): ChatML, the turn markers SmolLM2 was
# trained on, with tools in the system turn and Hermes-style <tool_call> replies.
TOOL_TEMPLATE = TEMPLATES / "qwen2_5.jinja"
MODEL = "smollm2"  # the servers' --alias: what /v1/models lists, so `--model smollm2` passes the model check
SLOTS = 4  # --parallel: requests beyond it wait (llamacpp:requests_deferred on /metrics)


def _started(extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    if not llama.is_built():
        pytest.fail(
            f"the real-model tier needs llama-server and the SmolLM2 GGUF in {llama.cache_dir()}: "
            f"run `{llama.BUILD_COMMAND}` from the repository root (once per machine)",
            pytrace=False,
        )
    try:
        process, base_url = llama.start_llama_server(
            parallel=SLOTS, extra_args=("--alias", MODEL, "--metrics", *extra_args)
        )
    except llama.LlamaServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield base_url + "/v1"
    finally:
        llama.stop(process)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """Base URL (ending in `/v1`) of llama-server with the model's own chat template, 4 slots, /metrics on."""
    yield from _started()


@pytest.fixture(scope="session")
def llama_tool_server() -> Iterator[str]:
    """Base URL (ending in `/v1`) of llama-server with a tool-aware chat template (`--chat-template-file`)."""
    yield from _started(("--chat-template-file", str(TOOL_TEMPLATE)))


# ----- a tool run: the weather environment against the tool server ------------------------------------------------

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


@pytest.fixture(scope="session")
def tool_run(llama_tool_server: str, prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of two weather rollouts (tests/realmodel/test_tool_rollouts.py says what each shows)."""
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
    return base / "runs" / "tools"

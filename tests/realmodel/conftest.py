"""The real-model tier: llama.cpp's `llama-server` with SmolLM2-135M-Instruct on CPU, started once per test session.

Nothing here skips: without the built binary every test of the tier fails with the command that builds it
(`python -m tests.servers.llama build`, once per machine; the files are cached outside the repository).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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

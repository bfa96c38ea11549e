"""The simulated server's BPE tokenizer and Jinja chat template: exact encoding, contiguity by construction, drift."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from rollouts.sim.bpe import TOKENIZER_PATH, ChatTokenizer, Drift
from rollouts.sim.server import SimApp, SimConfig
from rollouts.sim.tokens import ToolCall, Turn

CALL = ToolCall("calculator", json.dumps({"expression": "6 * 7"}))
PLAIN = ChatTokenizer()
DRIFTED = ChatTokenizer(Drift(retokenize_args=True, strip_think=True, turn_token=True))


def test_the_shipped_tokenizer_is_small_and_has_the_template_tokens() -> None:
    assert TOKENIZER_PATH.stat().st_size < 1_000_000
    assert {
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<|turn_end|>",
    } <= PLAIN.special.keys()


text = st.lists(
    st.sampled_from(
        [
            "What is 6 * 7?",
            " ",
            "\n",
            "\n\n",
            "  x",
            "'s",
            "ünï",
            "42",
            "<|im_end|>",
            "<think>",
            '{"a": 1}',
            "\t",
            "é",
            "😀",
            "</tool_call>",
            "word",
            "\x1c",
            "\x0b",
            "\r\n",
            "_x",
        ]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text)
def test_cached_word_encoding_equals_the_tokenizer_itself(value: str) -> None:
    assert PLAIN.encode(value) == PLAIN.tokenizer.encode(value, add_special_tokens=False).ids


@pytest.mark.parametrize(
    ("reasoning", "content", "call"),
    [
        ("I should call it.", "", CALL),
        ("", "", CALL),
        ("Think.", "Let me check.", CALL),
        ("Done.", "It is 42.", None),
        ("", "42", None),
    ],
)
def test_an_earlier_turn_renders_exactly_as_generated(reasoning: str, content: str, call: ToolCall | None) -> None:
    generation = PLAIN.generation(reasoning, content, call, None)
    user = [Turn("user", "What is 6 * 7?")]
    history = [*user, Turn("assistant", content, reasoning, [call] if call else []), Turn("tool", "42")]
    first, second = PLAIN.prompt_ids(user, ["calculator"]), PLAIN.prompt_ids(history, ["calculator"])
    assert second[: len(first) + len(generation.ids or [])] == first + (generation.ids or [])


def test_retokenized_arguments_keep_the_text_and_change_the_ids() -> None:
    plain, split = PLAIN.generation("", "", CALL, None), DRIFTED.generation("", "", CALL, None)
    decode = PLAIN.tokenizer.decode
    assert decode(split.ids or [], skip_special_tokens=False) == decode(plain.ids or [], skip_special_tokens=False)
    assert len(split.ids or []) > len(plain.ids or [])


def test_strip_think_and_turn_token_change_how_earlier_turns_render() -> None:
    history = [Turn("user", "q"), Turn("assistant", "a", "secret reasoning")]
    text = DRIFTED.render(history, [])
    assert "secret reasoning" not in text and "a<|turn_end|><|im_end|>" in text
    assert "<think>\nsecret reasoning\n</think>\na<|im_end|>" in PLAIN.render(history, [])


def test_a_generation_cut_at_max_tokens_keeps_text_and_drops_the_call() -> None:
    full = PLAIN.generation("I should call it.", "", CALL, None)
    cut = PLAIN.generation("I should call it.", "", CALL, 5)
    assert cut.truncated and cut.ids == (full.ids or [])[:5] and cut.tool_call is None
    assert cut.reasoning and "I should call it.".startswith(cut.reasoning) and cut.content == ""


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimApp, TestClient]]:
    server = SimApp(SimConfig(latency_ms=0))
    async with TestClient(TestServer(server.app())) as client:
        yield server, client


async def test_requests_without_token_ids_never_load_the_tokenizer(sim: tuple[SimApp, TestClient]) -> None:
    server, client = sim
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "temperature": 0}
    plain = await (await client.post("/v1/chat/completions", json=body)).json()
    assert server._chat_tokenizer is None
    tokens = await (await client.post("/v1/chat/completions", json=body | {"return_token_ids": True})).json()
    assert server._chat_tokenizer is not None
    assert plain["choices"][0]["message"] == tokens["choices"][0]["message"]  # the answer does not depend on it
    assert tokens["usage"]["prompt_tokens"] == len(tokens["prompt_token_ids"])
    assert tokens["usage"]["completion_tokens"] == len(tokens["choices"][0]["token_ids"])


async def test_truncate_prompt_tokens_keeps_the_last_tokens(sim: tuple[SimApp, TestClient]) -> None:
    _, client = sim
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "return_token_ids": True}
    full = await (await client.post("/v1/chat/completions", json=body)).json()
    cut = await (await client.post("/v1/chat/completions", json=body | {"truncate_prompt_tokens": 5})).json()
    assert cut["prompt_token_ids"] == full["prompt_token_ids"][-5:] and cut["usage"]["prompt_tokens"] == 5


@pytest.mark.integration
def test_the_committed_tokenizer_is_what_the_training_script_builds(tmp_path: Path) -> None:
    from rollouts.sim.train_tokenizer import main

    main(["--out", str(tmp_path / "tokenizer.json")])
    assert (tmp_path / "tokenizer.json").read_text() == TOKENIZER_PATH.read_text()

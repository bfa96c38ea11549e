"""Message conversion: Responses items -> chat messages in the openai and trl flavours, tools, plain-text forms."""

from __future__ import annotations

import json

import pytest

from rollouts.process.formats import (
    Conversation,
    ConversionError,
    chat_tools,
    completion_text,
    content_text,
    prompt_messages,
    prompt_text,
    to_messages,
)

CALC = {
    "type": "function",
    "name": "calculator",
    "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
}
TOOL_OUTPUT = [
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "use the tool"}]},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me compute."}]},
    {"type": "function_call", "call_id": "call_a", "name": "calculator", "arguments": '{"expression":"6*7"}'},
    {"type": "function_call", "call_id": "call_b", "name": "calculator", "arguments": '{"expression":"6+7"}'},
    {"type": "function_call_output", "call_id": "call_a", "output": "42"},
    {"type": "function_call_output", "call_id": "call_b", "output": "13"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "42 and 13."}]},
]


def test_tool_call_conversation_openai_flavour() -> None:
    assert to_messages(TOOL_OUTPUT) == [
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression":"6*7"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression":"6+7"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "42"},
        {"role": "tool", "tool_call_id": "call_b", "content": "13"},
        {"role": "assistant", "content": "42 and 13."},
    ]


def test_tool_call_conversation_trl_flavour() -> None:
    conv = Conversation([{"role": "user", "content": "6*7 and 6+7?"}], json.dumps(TOOL_OUTPUT), chat_tools([CALC]))
    assert conv.completion("trl") == [
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": {"expression": "6*7"}},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": {"expression": "6+7"}},
                },
            ],
        },
        {"role": "tool", "name": "calculator", "tool_call_id": "call_a", "content": "42"},
        {"role": "tool", "name": "calculator", "tool_call_id": "call_b", "content": "13"},
        {"role": "assistant", "content": "42 and 13."},
    ]
    assert conv.prompt("trl") == conv.prompt("openai") == [{"role": "user", "content": "6*7 and 6+7?"}]


def test_tool_only_turn_has_empty_content_and_later_text_joins_it() -> None:
    items = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]
    assert to_messages(items) == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    ]
    items.append({"type": "message", "role": "assistant", "content": "done"})
    assert to_messages(items)[0]["content"] == "done"


def test_prompt_items_roles_and_parts() -> None:
    assert prompt_messages('"just text"') == [{"role": "user", "content": "just text"}]
    items = [
        {"role": "developer", "content": "Be brief."},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Say "}, {"type": "input_text", "text": "no."}],
        },
    ]
    assert prompt_messages(json.dumps(items)) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say no."},
    ]


def test_non_string_tool_output_and_arguments() -> None:
    items = [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"x": 1}},
        {"type": "function_call_output", "call_id": "c", "output": {"ok": True}},
    ]
    messages = to_messages(items)
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == '{"x":1}'
    assert messages[1]["content"] == '{"ok":true}'


def test_chat_tools_converts_responses_tools_and_keeps_chat_tools() -> None:
    chat = {"type": "function", "function": {"name": "g", "parameters": {}}}
    assert chat_tools([CALC, chat]) == [
        {
            "type": "function",
            "function": {"name": "calculator", "description": "Evaluate arithmetic.", "parameters": CALC["parameters"]},
        },
        chat,
    ]
    assert chat_tools(None) is None and chat_tools([]) is None


def test_plain_text_forms() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert prompt_text(messages) == "S\n\nU\n\n"  # the joining text belongs to the prompt (TRL's convention)
    assert completion_text(to_messages(TOOL_OUTPUT)) == "42 and 13."
    assert completion_text(to_messages(TOOL_OUTPUT[2:4])) == ""
    assert content_text([{"type": "output_text", "text": "a"}, "b"]) == "ab"


@pytest.mark.parametrize(
    "items",
    [
        {"not": "a list"},
        ["a string item"],
        [{"type": "function_call", "call_id": "c", "arguments": "{}"}],
        [{"type": "web_search_call", "id": "ws"}],
        [{"role": "user", "content": 5}],
    ],
)
def test_unconvertible_items_raise(items: object) -> None:
    with pytest.raises(ConversionError):
        to_messages(items)

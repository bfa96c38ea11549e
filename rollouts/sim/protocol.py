"""OpenAI wire shapes for the simulated server: Chat Completions and Responses requests in, response bodies out."""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollouts.sim.answers import ToolSpec
from rollouts.sim.tokens import Generation, ToolCall, Turn, tokenize

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


class RequestError(ValueError):
    """A request the server refuses with 400 and an OpenAI `invalid_request_error` body."""


@dataclass(slots=True)
class SimRequest:
    """A chat or responses request, normalised to what the simulated model needs."""

    payload: dict[str, Any]
    model: str
    turns: list[Turn]
    tool_names: list[str]  # rendered into the prompt
    tools: list[ToolSpec]  # the ones the model may call (empty when tool_choice is "none")
    temperature: float
    max_tokens: int | None
    seed: int | None
    logprobs: bool
    return_token_ids: bool
    parallel_tool_calls: bool = True  # False: at most one function call per turn
    # vLLM and SGLang extensions that change what comes back with the tokens
    tokens_as_ids: bool = False  # vLLM return_tokens_as_token_ids: logprob tokens read "token_id:N"
    return_prompt_token_ids: bool = False  # SGLang: choices[0].prompt_token_ids
    return_meta_info: bool = False  # SGLang: choices[0].meta_info with output_token_logprobs
    truncate_prompt_tokens: int | None = None  # vLLM: keep only the last N prompt tokens

    @property
    def wants_tokens(self) -> bool:
        """Whether the reply carries token ids or log-probabilities, so the real tokenizer must run."""
        return self.logprobs or self.return_token_ids or self.return_prompt_token_ids or self.return_meta_info


@dataclass(frozen=True, slots=True)
class PromptTokens:  # not a NamedTuple: its `count` field would shadow tuple.count
    count: int
    ids: list[int] | None  # only when the request asked for token ids or log-probabilities


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") in _TEXT_PARTS)
        return "\n".join(str(text) for text in texts)
    raise RequestError("message content must be a string, a list of content parts or null")


def _common(payload: Any, conversation_key: str) -> tuple[str, float, int | None]:
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter")
    if payload.get(conversation_key) in (None, "", []):
        raise RequestError(f"missing required parameter: '{conversation_key}'")
    if payload.get("stream"):
        raise RequestError("stream=true is not supported by rollouts-sim; send stream=false")
    if payload.get("n") not in (None, 1):
        raise RequestError("n > 1 is not supported by rollouts-sim")
    temperature = payload.get("temperature")
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError("temperature must be a number between 0 and 2")
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("seed must be an integer")
    return model, float(temperature), seed


def _max_tokens(payload: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = payload.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(f"{key} must be a positive integer")
        return value
    return None


def _tool_spec(name: Any, parameters: Any) -> ToolSpec:
    if not isinstance(name, str) or not name:
        raise RequestError("each function tool needs a name")
    schema = parameters if isinstance(parameters, dict) else {}
    properties = list(schema.get("properties") or {})
    required = [key for key in schema.get("required") or () if key in properties]
    return ToolSpec(name, tuple(required + [key for key in properties if key not in required]))


def _choose_tools(specs: list[ToolSpec], tool_choice: Any) -> list[ToolSpec]:
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else tool_choice.get("name")
        return [spec for spec in specs if spec.name == wanted] or specs
    return specs


def parse_chat(payload: Any) -> SimRequest:
    model, temperature, seed = _common(payload, "messages")
    messages = payload["messages"]
    if not isinstance(messages, list):
        raise RequestError("messages must be a list")
    turns: list[Turn] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError("each message must be an object with a role")
        calls = []
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise RequestError("tool_calls entries need a function")
            calls.append(ToolCall(str(function.get("name", "")), str(function.get("arguments", ""))))
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        turns.append(Turn(message["role"], _text(message.get("content")), str(reasoning), calls))
    specs = []
    for tool in payload.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function") or {}
            specs.append(_tool_spec(function.get("name"), function.get("parameters")))
    return SimRequest(
        payload=payload,
        model=model,
        turns=turns,
        tool_names=[spec.name for spec in specs],
        tools=_choose_tools(specs, payload.get("tool_choice")),
        temperature=temperature,
        max_tokens=_max_tokens(payload, "max_completion_tokens", "max_tokens"),
        seed=seed,
        logprobs=bool(payload.get("logprobs")),
        return_token_ids=bool(payload.get("return_token_ids")),
        parallel_tool_calls=payload.get("parallel_tool_calls") is not False,
        tokens_as_ids=bool(payload.get("return_tokens_as_token_ids")),
        return_prompt_token_ids=bool(payload.get("return_prompt_token_ids")),
        return_meta_info=bool(payload.get("return_meta_info")),
        truncate_prompt_tokens=_max_tokens(payload, "truncate_prompt_tokens"),
    )


def _assistant_turn(turns: list[Turn], starts_new: bool) -> Turn:
    """The assistant turn that Responses items (reasoning, message, function_call) from one model call merge into."""
    if turns and turns[-1].role == "assistant" and not starts_new:
        return turns[-1]
    turn = Turn("assistant")
    turns.append(turn)
    return turn


def _input_turns(payload: dict[str, Any]) -> list[Turn]:
    turns: list[Turn] = []
    if isinstance(payload.get("instructions"), str) and payload["instructions"]:
        turns.append(Turn("system", payload["instructions"]))
    items = payload["input"]
    if isinstance(items, str):
        return [*turns, Turn("user", items)]
    if not isinstance(items, list):
        raise RequestError("input must be a string or a list of items")
    for item in items:
        if not isinstance(item, dict):
            raise RequestError("each input item must be an object")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") == "assistant":
            last = turns[-1] if turns else None
            turn = _assistant_turn(turns, starts_new=bool(last and (last.content or last.tool_calls)))
            turn.content = _text(item.get("content"))
        elif kind == "message":
            if not isinstance(item.get("role"), str):
                raise RequestError("each message item needs a role")
            turns.append(Turn(item["role"], _text(item.get("content"))))
        elif kind == "reasoning":
            parts = item.get("summary") or item.get("content") or []
            turn = _assistant_turn(turns, starts_new=True)
            turn.reasoning = "\n".join(str(part.get("text", "")) for part in parts if isinstance(part, dict))
        elif kind == "function_call":
            turn = _assistant_turn(turns, starts_new=False)
            turn.tool_calls.append(ToolCall(str(item.get("name", "")), str(item.get("arguments", ""))))
        elif kind == "function_call_output":
            output = item.get("output", "")
            turns.append(Turn("tool", output if isinstance(output, str) else json.dumps(output)))
    return turns


def parse_responses(payload: Any) -> SimRequest:
    model, temperature, seed = _common(payload, "input")
    specs = [
        _tool_spec(tool.get("name"), tool.get("parameters"))
        for tool in payload.get("tools") or ()
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]
    return SimRequest(
        payload=payload,
        model=model,
        turns=_input_turns(payload),
        tool_names=[spec.name for spec in specs],
        tools=_choose_tools(specs, payload.get("tool_choice")),
        temperature=temperature,
        max_tokens=_max_tokens(payload, "max_output_tokens"),
        seed=seed,
        logprobs=False,
        return_token_ids=bool(payload.get("return_token_ids")),
        parallel_tool_calls=payload.get("parallel_tool_calls") is not False,
        truncate_prompt_tokens=_max_tokens(payload, "truncate_prompt_tokens"),
    )


def logprob_values(rng: random.Random, count: int) -> list[float]:
    """Plausible log-probabilities: exponentially distributed, mostly confident tokens and a few uncertain ones."""
    uniform = rng.random
    return [round(math.log(1.0 - uniform()) / 5.0, 4) for _ in range(count)]


def chat_body(
    request: SimRequest, generation: Generation, prompt: PromptTokens, logprobs: list[float]
) -> dict[str, Any]:
    calls = generation.tool_calls
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if calls and not generation.content else generation.content,
        "reasoning_content": generation.reasoning or None,
    }
    if calls:
        message["tool_calls"] = [
            {"id": _new_id("call_"), "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ]
    finish = "length" if generation.truncated else ("tool_calls" if calls else "stop")
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    choice["stop_reason"] = None  # vLLM's extra field
    if request.logprobs:
        tokens = [f"token_id:{i}" for i in generation.token_ids] if request.tokens_as_ids else generation.tokens
        choice["logprobs"] = {
            "content": [
                {"token": token, "logprob": value, "bytes": None, "top_logprobs": []}
                for token, value in zip(tokens, logprobs, strict=True)
            ]
        }
    body: dict[str, Any] = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt.count,
            "completion_tokens": len(generation.tokens),
            "total_tokens": prompt.count + len(generation.tokens),
        },
    }
    if request.return_token_ids:
        body["prompt_token_ids"] = prompt.ids  # vLLM's place
        choice["token_ids"] = generation.token_ids
    if request.return_prompt_token_ids:
        choice["prompt_token_ids"] = prompt.ids  # SGLang's place
    if request.return_meta_info:
        meta: dict[str, Any] = {
            "id": body["id"],
            "finish_reason": {"type": finish},
            "prompt_tokens": prompt.count,
            "completion_tokens": len(generation.tokens),
        }
        if request.logprobs:
            meta["output_token_logprobs"] = [
                [value, i, None] for value, i in zip(logprobs, generation.token_ids, strict=True)
            ]
        choice["meta_info"] = meta
    return body


def responses_body(
    request: SimRequest, generation: Generation, prompt: PromptTokens, logprobs: list[float]
) -> dict[str, Any]:
    payload, calls = request.payload, generation.tool_calls
    output: list[dict[str, Any]] = []
    if generation.reasoning:
        summary = [{"type": "summary_text", "text": generation.reasoning}]
        output.append({"type": "reasoning", "id": _new_id("rs_"), "summary": summary})
    if calls:
        output.extend(
            {
                "type": "function_call",
                "id": _new_id("fc_"),
                "call_id": _new_id("call_"),
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }
            for call in calls
        )
    else:
        output.append(
            {
                "type": "message",
                "id": _new_id("msg_"),
                "role": "assistant",
                "status": "incomplete" if generation.truncated else "completed",
                "content": [{"type": "output_text", "text": generation.content, "annotations": []}],
            }
        )
    if request.return_token_ids:  # on the call's last item, as NeMo Gym puts them
        output[-1]["prompt_token_ids"] = prompt.ids
        output[-1]["generation_token_ids"] = generation.token_ids
        output[-1]["generation_log_probs"] = logprobs
    reasoning_tokens = generation.reasoning_tokens
    if reasoning_tokens is None:  # the reasoning's words plus <think> and </think>
        reasoning_tokens = (
            min(len(tokenize(generation.reasoning)) + 2, len(generation.tokens)) if generation.reasoning else 0
        )
    return {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "model": request.model,
        "status": "incomplete" if generation.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if generation.truncated else None,
        "error": None,
        "instructions": payload.get("instructions"),
        "output": output,
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "tool_choice": payload.get("tool_choice", "auto"),
        "tools": payload.get("tools") or [],
        "temperature": payload.get("temperature", 1.0),
        "top_p": payload.get("top_p", 1.0),
        "max_output_tokens": payload.get("max_output_tokens"),
        "previous_response_id": None,
        "metadata": payload.get("metadata") or {},
        "usage": {
            "input_tokens": prompt.count,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(generation.tokens),
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt.count + len(generation.tokens),
        },
    }


# The signature shared by chat_body and responses_body.
BodyBuilder = Callable[[SimRequest, Generation, PromptTokens, list[float]], dict[str, Any]]

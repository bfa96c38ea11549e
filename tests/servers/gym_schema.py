"""NeMo Gym 0.7's request models for `/verify` and `/seed_session`, restated for the test resources server.

What they enforce, as NeMo Gym does (checked against nemo_gym.openai_utils and base_resources_server, and in
tests/unit/test_gym_strictness.py against the real models when NEMO_GYM_PYTHON is set):
- `responses_create_params` forbids keys the Responses API does not have (`seed`, `top_k`...); function tools need
  `strict` and `parameters` (both may be null); input items are typed messages, function calls, results, reasoning.
- `response` is a complete Responses object: `id`, `created_at`, `model`, `object: "response"`, `output` items with a
  `type`, `parallel_tool_calls`, `tool_choice`, `tools`; `usage`, when present, with `input_tokens_details` and
  `output_tokens_details`. An `output_text` part needs `annotations`.
- Other top-level keys are verifier metadata: accepted.
The server is stricter in one way: it knows only function tools, and only message / function_call /
function_call_output / reasoning items.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputText(_Loose):
    type: Literal["input_text"]
    text: str


class InputImage(_Loose):
    type: Literal["input_image"]
    detail: Literal["low", "high", "auto", "original"]
    image_url: str | None = None
    file_id: str | None = None


class OutputText(_Loose):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any]


class Refusal(_Loose):
    type: Literal["refusal"] = "refusal"
    refusal: str


InputPart = InputText | InputImage | OutputText


class EasyMessage(_Loose):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]


class OutputMessage(_Loose):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputText | Refusal]


class FunctionCall(_Loose):
    type: Literal["function_call"]
    arguments: str
    call_id: str
    name: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutput(_Loose):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText | InputImage]


class Reasoning(_Loose):
    type: Literal["reasoning"]
    id: str
    summary: list[dict[str, Any]]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str
    parameters: dict[str, Any] | None = Field(...)  # required, may be null (openai's FunctionToolParam)
    strict: bool | None = Field(...)
    description: str | None = None
    defer_loading: bool | None = None


class ResponseCreateParams(BaseModel):
    """The fields of NeMoGymResponseCreateParamsNonStreaming; anything else is `extra_forbidden`."""

    model_config = ConfigDict(extra="forbid")

    background: bool | None = None
    include: list[str] | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    store: bool | None = None
    context_management: list[dict[str, Any]] | None = None
    conversation: str | dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None
    temperature: float | None = None
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    stream: Literal[False] | None = None


class InputTokensDetails(_Loose):
    cached_tokens: int | None = Field(...)


class OutputTokensDetails(_Loose):
    reasoning_tokens: int | None = Field(...)


class Usage(_Loose):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Response(_Loose):
    id: str
    created_at: float
    model: str
    object: Literal["response"]
    output: list[dict[str, Any]]
    parallel_tool_calls: bool
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    usage: Usage | None = None


class VerifyRequest(_Loose):
    responses_create_params: ResponseCreateParams
    response: Response


_ITEM_MODELS: dict[str, TypeAdapter[Any]] = {
    "function_call": TypeAdapter(FunctionCall),
    "function_call_output": TypeAdapter(FunctionCallOutput),
    "reasoning": TypeAdapter(Reasoning),
}
_INPUT_MESSAGE = TypeAdapter(EasyMessage | OutputMessage)
_OUTPUT_MESSAGE = TypeAdapter(OutputMessage | EasyMessage)


def _errors(exc: ValidationError, prefix: list[Any]) -> list[dict[str, Any]]:
    return [{"type": e["type"], "loc": ["body", *prefix, *e["loc"]], "msg": e["msg"]} for e in exc.errors()]


def _item_errors(item: Any, where: list[Any], *, output: bool) -> list[dict[str, Any]]:
    if not isinstance(item, dict):
        return [{"type": "model_type", "loc": ["body", *where], "msg": "Input should be an object"}]
    kind = item.get("type") or ("message" if "role" in item and not output else None)
    if kind == "message":
        adapter = (
            _OUTPUT_MESSAGE
            if output and item.get("role", "assistant") == "assistant" and "id" in item
            else _INPUT_MESSAGE
        )
    elif kind in _ITEM_MODELS:
        adapter = _ITEM_MODELS[kind]
    else:
        return [{"type": "union_tag_invalid", "loc": ["body", *where, "type"], "msg": f"unknown item type {kind!r}"}]
    try:
        adapter.validate_python(item)
    except ValidationError as exc:
        return _errors(exc, where)
    return []


def params_errors(params: Any, where: list[Any]) -> list[dict[str, Any]]:
    try:
        ResponseCreateParams.model_validate(params)
    except ValidationError as exc:
        return _errors(exc, where)
    items = params.get("input")
    if isinstance(items, list):
        return [e for i, item in enumerate(items) for e in _item_errors(item, [*where, "input", i], output=False)]
    return []


def verify_errors(body: Any) -> list[dict[str, Any]]:
    """FastAPI-style 422 details for a /verify body (empty when valid)."""
    if not isinstance(body, dict):
        return [{"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary"}]
    try:
        VerifyRequest.model_validate(body)
        errors: list[dict[str, Any]] = []
    except ValidationError as exc:
        errors = _errors(exc, [])
    if isinstance(body.get("responses_create_params"), dict):
        errors += [
            e for e in params_errors(body["responses_create_params"], ["responses_create_params"]) if e not in errors
        ]
    response = body.get("response")
    if isinstance(response, dict) and isinstance(response.get("output"), list):
        for i, item in enumerate(response["output"]):
            errors += _item_errors(item, ["response", "output", i], output=True)
    return errors


def seed_errors(body: Any) -> list[dict[str, Any]]:
    """A /seed_session body: any object (BaseSeedSessionRequest); `responses_create_params`, which NeMo Gym's agents
    always send validated, must be valid when present."""
    if not isinstance(body, dict):
        return [{"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary"}]
    if "responses_create_params" in body:
        return params_errors(body["responses_create_params"], ["responses_create_params"])
    return []

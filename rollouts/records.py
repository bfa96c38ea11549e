"""Record shapes: input rows (wire, tolerant), rollout rows (stored, versioned) and the helpers that build them.

A rollout row is a superset of NeMo Gym's output row, so Gym and NeMo RL tooling can read ours and we read theirs:

    {
      # the input row echoed (normalised: `prompt` / `messages` rows become `responses_create_params`)
      "responses_create_params": {"input": [...messages or items...], "tools": [...], ...sampling},
      "agent_ref": {"name": "math"},             # environment that scored it
      "expected_answer": "42", ...               # any other input keys, unchanged (verifier metadata)
      "_ng_task_index": 7, "_ng_rollout_index": 3,
      "response": {... Responses-API object: id, created_at, model, object, output, usage, status,
                   parallel_tool_calls, tool_choice, tools ...},
      "reward": 1.0,
      ...extra fields returned by the verifier (top level, as NeMo Gym does)...
      "sampling": {"temperature": 1.0, "top_p": 1.0, "seed": 7},   # what was really sent (seed included)
      "rollout_id": "3f9c...", "status": "ok" | "failed", "error": null | {"type", "message", "status_code", "stage"},
      "attempts": 1, "finish_reason": "stop" | "length" | "tool_calls" | ...,
      "timings": {"queue_ms", "model_ms", "tool_ms", "generate_ms", "verify_ms", "total_ms", "started_at",
                  "finished_at"},
      "schema_version": 2
    }

`RolloutRow` below types it (a TypedDict: building a row costs nothing more than the dict) and `validate_rollout`
checks one, for tests and for readers of rows written elsewhere; the hot path never validates.

Output items follow the Responses API: `message` (content `output_text` parts), `reasoning` (`summary` of
`summary_text`), `function_call` (`call_id`, `name`, `arguments` as a JSON string), `function_call_output`
(`call_id`, `output`). Token fields sit on the last output item of each model call, with NeMo Gym's names:
`prompt_token_ids`, `generation_token_ids`, `generation_log_probs`.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import (
    Any,
    Literal,
    NotRequired,  # pydantic validates only this one on Python < 3.12
)

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter
from typing_extensions import TypedDict

# 2: `sampling` holds what was sent; `responses_create_params` stays a valid NeMo Gym request (no `seed`).
SCHEMA_VERSION = 2


class FailureRecord(TypedDict):
    """Why a rollout failed: the error class (named after the boundary), its message, the HTTP status if any, the
    stage, whether running again may help, and the attempts made."""

    type: str
    message: str
    status_code: int | None
    stage: str
    retryable: NotRequired[bool]
    attempts: NotRequired[int]


class ToolCallTiming(TypedDict):
    name: str
    ms: float


class Timings(TypedDict, total=False):
    queue_ms: float
    model_ms: float
    tool_ms: float
    generate_ms: float
    verify_ms: float
    total_ms: float
    started_at: float
    finished_at: float
    model_calls_ms: list[float]  # each model call's latency, retries included, in call order
    tool_calls: list[ToolCallTiming]  # each tool call's name and wall time, in call order (tool rollouts only)


class CachedTokens(TypedDict, total=False):
    cached_tokens: int


class ReasoningTokens(TypedDict, total=False):
    reasoning_tokens: int


class Usage(TypedDict, total=False):
    """The Responses API's usage, with the detail objects NeMo Gym's models require."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: CachedTokens
    output_tokens_details: ReasoningTokens


class ContentPart(TypedDict, total=False):
    type: str
    text: str
    annotations: list[dict[str, Any]]


class OutputItem(TypedDict, total=False):
    """One Responses output item (message, reasoning, function_call, function_call_output) with the token fields
    the last item of each model call carries."""

    type: str
    id: str
    role: str
    status: str
    content: list[ContentPart]
    summary: list[ContentPart]
    call_id: str
    name: str
    arguments: str
    output: str
    prompt_token_ids: list[int]
    generation_token_ids: list[int]
    generation_log_probs: list[float]


class IncompleteDetails(TypedDict, total=False):
    reason: str


class Response(TypedDict, total=False):
    """The Responses-API object of a rollout (rollouts/stages/response.py: `response_object`)."""

    id: str
    object: str
    created_at: float
    model: str
    status: str
    incomplete_details: IncompleteDetails | None
    output: list[OutputItem]
    usage: Usage
    parallel_tool_calls: bool
    tool_choice: Any
    tools: list[dict[str, Any]]
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None


class CreateParams(TypedDict, total=False):
    """The NeMo Gym request: `input` (messages or items, or a string), instructions, tools, sampling."""

    input: Any
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    max_output_tokens: int


class AgentRef(TypedDict, total=False):
    name: str


class ToolCallStats(TypedDict, total=False):
    calls: int
    errors: int
    timeouts: int
    total_ms: float
    max_ms: float


class RolloutRow(TypedDict, total=False):
    """A stored rollout row; input keys and verifier extras sit beside these fields (see the module docstring).

    The one typed description of what the collector writes: the polars schemas the profile and the filter stage
    read with are derived from it (rollouts/schema.py), and a test fails when the collector writes a field that is
    not here."""

    responses_create_params: CreateParams
    agent_ref: AgentRef
    _ng_task_index: int
    _ng_rollout_index: int
    response: Response
    reward: float | None
    sampling: dict[str, Any]
    rollout_id: str
    status: Literal["ok", "failed"]
    error: FailureRecord | None
    attempts: int
    finish_reason: str
    end_reason: str
    tool_stats: dict[str, ToolCallStats]
    timings: Timings
    schema_version: int
    # With --return-tokens: where every call's token ids came from (--token-source, `auto` resolved); None when the
    # rollout failed before any reply said.
    token_source: Literal["vllm", "sglang", "llamacpp", "tokenize"] | None


@cache
def _row_adapter() -> TypeAdapter[RolloutRow]:
    return TypeAdapter(RolloutRow)


def validate_rollout(row: dict[str, Any]) -> RolloutRow:
    """Check a rollout row's own fields (types, status, error shape); raises pydantic's ValidationError."""
    checked = _row_adapter().validate_python(row)
    if checked.get("status") == "failed" and not checked.get("error"):
        raise ValueError("a failed rollout needs its error")
    return checked


# Keys the collector owns on a rollout row; verifier extras and input keys never overwrite them.
RESERVED_KEYS = frozenset(
    {
        "responses_create_params",
        "agent_ref",
        "_ng_task_index",
        "_ng_rollout_index",
        "response",
        "reward",
        "sampling",
        "rollout_id",
        "status",
        "error",
        "attempts",
        "finish_reason",
        "end_reason",
        "tool_stats",
        "timings",
        "schema_version",
        "token_source",
    }
)

# Sampling fields a row may carry in `responses_create_params`; CLI flags override them.
SAMPLING_FIELDS = ("temperature", "top_p", "max_output_tokens", "seed")


class Prompt(BaseModel):
    """One validated input row, ready to be rolled out. Stored in the run's shard files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_index: int
    line: int
    env: str
    row: dict[str, Any]  # normalised input row: always has `responses_create_params.input`

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.row["responses_create_params"]  # normalised to an object on reading
        return params


def rollout_id(run_id: str, task_index: int, rollout_index: int) -> str:
    """Deterministic id: the same run, task and repeat always give the same id, so resume never duplicates."""
    return hashlib.sha256(f"{run_id}/{task_index}/{rollout_index}".encode()).hexdigest()[:20]


def input_messages(params: dict[str, Any]) -> list[dict[str, Any]]:
    """`responses_create_params.input` as a list of items (a bare string is one user message)."""
    value = params.get("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value or [])


def output_text(response: dict[str, Any] | None) -> str:
    """Concatenated assistant text of a Responses-API object (the last message wins on multi-turn)."""
    if not response:
        return ""
    texts: list[str] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            parts = item.get("content") or []
            if isinstance(parts, str):
                texts = [parts]
                continue
            texts = [p.get("text", "") for p in parts if isinstance(p, dict)]
    return "".join(texts)


def dumps(row: Any) -> str:
    """One compact JSON line. orjson: 5-10x faster than json on rollout rows, which the hot loop writes per rollout."""
    return orjson.dumps(row).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)

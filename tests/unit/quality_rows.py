"""Crafted rollout rows for the health-check tests: our row shape (schema_version 2) with Responses output items."""

from __future__ import annotations

import random
from typing import Any

from rollouts.quality import QualityConfig, QualityResult, check_run

CALCULATOR = {
    "type": "function",
    "name": "calculate",
    "description": 'Evaluate an expression such as "(1 + 2) * 3"; a \\ is an escape.',
    "parameters": {
        "type": "object",
        "properties": {
            "expression": {"type": "string", "description": "the expression", "pattern": "^[\\d +*/()-]+$"},
            "precision": {"type": "integer"},
            "mode": {"type": "string", "enum": ["exact", "float"]},
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    "strict": True,
}


def message(text: str, gen: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    if gen is not None:
        item |= {
            "prompt_token_ids": [1, 2, 3],
            "generation_token_ids": list(range(gen)),
            "generation_log_probs": [-0.5] * gen,
        }
    return item


def reasoning(text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": text}]}


def call(name: str, arguments: str, call_id: str = "c1") -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name, "arguments": arguments}


def output(call_id: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": text}


def row(
    items: list[dict[str, Any]],
    *,
    task: int = 0,
    rollout: int = 0,
    env: str = "math",
    finish: str = "stop",
    output_tokens: int | None = 10,
    tools: list[dict[str, Any]] | None = None,
    temperature: float = 1.0,
    **extra: Any,
) -> dict[str, Any]:
    usage = None if output_tokens is None else {"input_tokens": 5, "output_tokens": output_tokens, "total_tokens": 15}
    params: dict[str, Any] = {"input": [{"role": "user", "content": "What is 2 + 2?"}], "temperature": temperature}
    if tools is not None:
        params["tools"] = tools
    incomplete = finish == "length"
    return {
        "responses_create_params": params,
        "agent_ref": {"name": env},
        "_ng_task_index": task,
        "_ng_rollout_index": rollout,
        "rollout_id": f"r{task}-{rollout}",
        "schema_version": 2,
        "sampling": {"temperature": temperature},
        "response": {
            "id": "resp_1",
            "object": "response",
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": items,
            "usage": usage,
        },
        "finish_reason": finish,
        "end_reason": finish,
        "status": "ok",
        "error": None,
        "reward": 1.0,
        **extra,
    }


def prose(words: int, seed: int = 0) -> str:
    """Varied text without loops: random words from a vocabulary, capitalised sentences."""
    rng = random.Random(seed)
    vocab = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "stone",
        "cloud",
        "number",
        "answer",
        "table",
        "proof",
        "sum",
        "carry",
        "digit",
        "prime",
        "square",
        "root",
        "angle",
        "vector",
        "matrix",
        "graph",
        "edge",
        "node",
        "path",
        "weight",
        "value",
        "order",
        "field",
        "ring",
        "group",
    ]
    out = []
    for at in range(words):
        word = rng.choice(vocab) + rng.choice(["", "s", "ed", "ing", "ly"])
        out.append(word.capitalize() if at % 9 == 0 else word)
    return " ".join(out) + "."


def check(rows: list[dict[str, Any]], **options: Any) -> QualityResult:
    return check_run(rows, QualityConfig(**options))


def fired(result: QualityResult, check_id: str) -> list[bool | None]:
    return result.table[f"fired_{check_id}"].to_list()


def evidence(result: QualityResult, check_id: str) -> list[str | None]:
    return result.table[f"evidence_{check_id}"].to_list()

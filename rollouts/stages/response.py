"""What a rollout's record says about its model calls: the sampling it asked for, and the Responses-API object its
calls add up to (the `response` field, complete enough for NeMo Gym's verifiers)."""

from __future__ import annotations

from typing import Any

from rollouts.client.model import ModelCall
from rollouts.config import CollectConfig
from rollouts.envs.remote import gym_usage


def sampling_for(config: CollectConfig, params: dict[str, Any], rollout_index: int) -> dict[str, Any]:
    """Row sampling fields are defaults, options override them, the objective's preset fills what is left."""
    sampling = {k: params[k] for k in ("temperature", "top_p", "max_output_tokens") if params.get(k) is not None}
    for key, value in config.sampling_defaults().items():
        sampling.setdefault(key, value)
    sampling.update(config.sampling_overrides())
    base_seed = config.sampling.seed if config.sampling.seed is not None else params.get("seed")
    if base_seed is not None:
        sampling["seed"] = base_seed + rollout_index
    return sampling


def usage_of(calls: list[ModelCall]) -> dict[str, Any]:
    """Responses-API usage summed over the calls, with the detail objects NeMo Gym's usage model requires."""
    return gym_usage(
        sum(c.input_tokens for c in calls),
        sum(c.output_tokens for c in calls),
        cached_tokens=sum(c.cached_tokens for c in calls),
        reasoning_tokens=sum(c.reasoning_tokens for c in calls),
    )


def response_object(
    calls: list[ModelCall], output: list[dict[str, Any]], params: dict[str, Any], model: str, sampling: dict[str, Any]
) -> dict[str, Any]:
    """A complete Responses-API object (NeMo Gym verifiers answer 422 without every one of these fields)."""
    last = calls[-1]
    incomplete = last.finish_reason == "length"
    return {
        "id": last.response_id if last.response_id.startswith("resp") else f"resp_{last.response_id}",
        "object": "response",
        "created_at": calls[0].created_at,
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": output,
        "usage": usage_of(calls),
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "tool_choice": params.get("tool_choice", "auto"),
        "tools": params.get("tools", []),
        "temperature": sampling.get("temperature"),
        "top_p": sampling.get("top_p"),
        "max_output_tokens": sampling.get("max_output_tokens"),
    }

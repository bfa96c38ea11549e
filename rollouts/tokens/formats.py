"""The three token-record shapes, one row per sample: ours (flat and aligned), NeMo RL's message log, and verl's.

- `tokens`: `input_ids`, `loss_mask` (1 exactly on generated tokens), `logprobs` aligned with `input_ids` (null where
  not generated), plus `reward`, `advantage`, `group_id`, `rollout_id`, `sample_index`, `task_index`, `rollout_index`.
- `nemo_rl`: `message_log`, alternating `{"role": "user", "content": "", "token_ids"}` (prompt tokens new at that
  turn) and `{"role": "assistant", "content": "", "token_ids", "generation_logprobs"}` (one model call), and `length`.
  That is the message log NeMo RL builds from NeMo Gym rollouts in `NemoGym._postprocess_nemo_gym_to_nemo_rl_result`
  (nemo_rl/environments/nemo_gym.py, NVIDIA-NeMo/RL): the roles decide the loss mask there
  (`add_loss_mask_to_message_log` in nemo_rl/data/llm_message_utils.py trains on "assistant"), and the ids are
  `torch.tensor(...)`-ed, so empty segments are left out.
- `verl`: verl's `AgentLoopOutput` fields (verl/experimental/agent_loop/agent_loop.py, volcengine/verl): `prompt_ids`
  (the first prompt), `response_ids` (everything after it), `response_mask` (1 for generated tokens, 0 for tool and
  template tokens) and `response_logprobs`, with 0.0 on non-generated positions as `ToolAgentLoop` pads them
  (verl/experimental/agent_loop/tool_agent_loop.py); null when any generated token lacks a log-probability;
  `reward_score` (the rollout's reward) and `metrics` (`AgentLoopMetrics`, required: zeros, since the agent loop's
  timings are not known here), so a row loads as `AgentLoopOutput(**row)`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from rollouts.tokens.samples import Sample

FORMATS = ("tokens", "nemo_rl", "verl")
FILES = {"tokens": "tokens.parquet", "nemo_rl": "nemo_rl.jsonl", "verl": "verl.parquet"}
IDS = pl.List(pl.Int32())
META_SCHEMA: dict[str, pl.DataType] = {
    "group_id": pl.String(),
    "rollout_id": pl.String(),
    "sample_index": pl.Int32(),
    "task_index": pl.Int64(),
    "rollout_index": pl.Int64(),
    "reward": pl.Float64(),
    "advantage": pl.Float64(),
}
TOKENS_SCHEMA: dict[str, pl.DataType] = {
    **META_SCHEMA,
    "input_ids": IDS,
    "loss_mask": pl.List(pl.Int8()),
    "logprobs": pl.List(pl.Float64()),
}
VERL_SCHEMA: dict[str, pl.DataType] = {
    **META_SCHEMA,
    "prompt_ids": IDS,
    "response_ids": IDS,
    "response_mask": pl.List(pl.Int8()),
    "response_logprobs": pl.List(pl.Float64()),
    "num_turns": pl.Int32(),
    "reward_score": pl.Float64(),
    "metrics": pl.Struct(
        {
            "generate_sequences": pl.Float64(),
            "tool_calls": pl.Float64(),
            "compute_score": pl.Float64(),
            "num_preempted": pl.Int64(),
        }
    ),
}
SCHEMAS = {"tokens": TOKENS_SCHEMA, "verl": VERL_SCHEMA}


def tokens_row(sample: Sample, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "sample_index": sample.index,
        "input_ids": sample.input_ids,
        "loss_mask": sample.loss_mask,
        "logprobs": sample.logprobs,
    }


def nemo_rl_row(sample: Sample, meta: dict[str, Any]) -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    for segment in sample.segments:
        if not segment.ids:
            continue
        message: dict[str, Any] = {"role": segment.role, "content": "", "token_ids": segment.ids}
        if segment.role == "assistant":
            message["generation_logprobs"] = segment.logprobs
        log.append(message)
    return {**meta, "sample_index": sample.index, "message_log": log, "length": sum(len(m["token_ids"]) for m in log)}


def verl_row(sample: Sample, meta: dict[str, Any]) -> dict[str, Any]:
    first, rest = sample.segments[0], sample.segments[1:]
    response = [i for s in rest for i in s.ids]
    mask = [int(s.role == "assistant") for s in rest for _ in s.ids]
    complete = all(s.logprobs is not None for s in rest if s.role == "assistant")
    logprobs = None
    if complete:
        logprobs = [
            v
            for s in rest
            for v in (s.logprobs if s.role == "assistant" and s.logprobs is not None else [0.0] * len(s.ids))
        ]
    return {
        **meta,
        "sample_index": sample.index,
        "prompt_ids": first.ids,
        "response_ids": response,
        "response_mask": mask,
        "response_logprobs": logprobs,
        "num_turns": len(sample.segments),  # as verl counts: the prompt, each model call and each tool turn
        "reward_score": meta.get("reward"),
        # AgentLoopOutput requires its metrics (timings of the agent loop, not known here: zeros)
        "metrics": {"generate_sequences": 0.0, "tool_calls": 0.0, "compute_score": 0.0, "num_preempted": -1},
    }


ROWS = {"tokens": tokens_row, "nemo_rl": nemo_rl_row, "verl": verl_row}

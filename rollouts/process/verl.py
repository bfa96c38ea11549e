"""verl files: RL prompts for `RLHFDataset` and multi-turn SFT for `MultiTurnSFTDataset`, as Parquet with native types.

Read by verl as they are (checked against verl's `rl_dataset.py` and `multiturn_sft_dataset.py`):
- RL (`rl/verl` -> `verl.parquet`): one row per prompt the RL selection kept (per distinct prompt of a task when a
  stateful environment gave its rollouts different ones): `data_source` (the environment, `agent_ref.name`),
  `prompt` (chat messages), `reward_model: {"style": "rule", "ground_truth"}` (`expected_answer` as text),
  `extra_info: {"index" (task index), "group_id", "need_tools_kwargs", "tools_kwargs": {tool: {"create_kwargs":
  {"ground_truth"}}}, "metadata" (the row's other verifier fields, JSON text)}`.
- SFT (`sft/verl` -> `verl.parquet`): `messages` and `tools` per selected rollout.
Messages have one fixed struct (`role`, `content`, `tool_calls`, `tool_call_id`, `name`; absent fields are null,
which transformers drops before rendering); tool-call `arguments` stay JSON text, as in verl's own test data, because
a Parquet column needs one type and arguments differ per tool. Images become `<image>` placeholders in the content
with an `images` column of `{"image": url}` (what verl's vision path fetches); the column is written only when some
row has an image, since verl's SFT dataset then requires a processor for every row.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ..client.chat import Message
from ..records import dumps, loads

IMAGE = "<image>"
_CALL = pl.Struct(
    {"id": pl.String(), "type": pl.String(), "function": pl.Struct({"name": pl.String(), "arguments": pl.String()})}
)
MESSAGE = pl.Struct(
    {
        "role": pl.String(),
        "content": pl.String(),
        "tool_calls": pl.List(_CALL),
        "tool_call_id": pl.String(),
        "name": pl.String(),
    }
)
IMAGES = pl.List(pl.Struct({"image": pl.String()}))


def verl_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """OpenAI-flavour messages as verl rows: text content with `<image>` placeholders, and the images in order."""
    out, images = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if part["type"] == "image_url":
                    images.append({"image": part["image_url"]["url"]})
                    texts.append(IMAGE)
                else:
                    texts.append(part["text"])
            content = "".join(texts)
        row = {
            "role": message["role"],
            "content": content or "",
            "tool_calls": message.get("tool_calls"),
            "tool_call_id": message.get("tool_call_id"),
            "name": message.get("name"),
        }
        out.append(row)
    return out, images


def ground_truth(extra: dict[str, Any]) -> str | None:
    value = extra.get("expected_answer")
    return None if value is None else value if isinstance(value, str) else dumps(value)


def rl_prompt_row(
    prompt_messages: list[Message],
    tools: list[dict[str, Any]] | None,
    extra_json: str | None,
    task_index: int | None,
    group_id: str,
) -> dict[str, Any]:
    extra = loads(extra_json) if extra_json else {}
    messages, images = verl_messages(prompt_messages)
    truth = ground_truth(extra)
    names = [
        t["function"]["name"]
        for t in tools or ()
        if isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ]
    env = (extra.get("agent_ref") or {}).get("name") if isinstance(extra.get("agent_ref"), dict) else None
    metadata = {k: v for k, v in extra.items() if k != "agent_ref"}
    info: dict[str, Any] = {
        "index": task_index,
        "group_id": group_id,
        "need_tools_kwargs": bool(names),
        "metadata": dumps(metadata) if metadata else None,
    }
    if names:
        info["tools_kwargs"] = {name: {"create_kwargs": {"ground_truth": truth}} for name in names}
    return {
        "data_source": env or "rollouts",
        "prompt": messages,
        "images": images,
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": info,
    }


def rl_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """RL prompt rows with explicit types where they are fixed; `extra_info.tools_kwargs` is inferred (tool names)."""
    has_images = any(r["images"] for r in rows)
    frame = pl.DataFrame(
        {
            "data_source": [r["data_source"] for r in rows],
            "prompt": pl.Series([r["prompt"] for r in rows], dtype=pl.List(MESSAGE)),
            "reward_model": pl.Series(
                [r["reward_model"] for r in rows], dtype=pl.Struct({"style": pl.String(), "ground_truth": pl.String()})
            ),
            "extra_info": [r["extra_info"] for r in rows],
        }
    )
    if has_images:
        frame = frame.with_columns(images=pl.Series([r["images"] for r in rows], dtype=IMAGES))
    return frame


def _prune_empty(value: Any) -> Any:
    """Drop keys whose value is an empty object: Parquet has no struct without fields, and in a JSON Schema an absent
    `properties` means the same as an empty one."""
    if isinstance(value, dict):
        return {k: _prune_empty(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


def sft_frame(rows: list[tuple[list[Message], list[dict[str, Any]] | None]]) -> tuple[pl.DataFrame, int]:
    """(messages, tools) rows as the SFT Parquet frame, and how many rows' tools Parquet could not hold exactly: tools
    of different shapes in one file are unified into one struct (each padded with nulls), empty objects dropped."""
    converted = [verl_messages(messages) for messages, _ in rows]
    tools = [t or [] for _, t in rows]
    frame = pl.DataFrame({"messages": pl.Series([m for m, _ in converted], dtype=pl.List(MESSAGE))})
    if any(tools):
        column = pl.Series("tools", [_prune_empty(t) for t in tools])
        frame = frame.with_columns(column)
        padded = sum(1 for got, want in zip(column.to_list(), tools, strict=True) if got != want)
    else:
        padded = 0
    if any(images for _, images in converted):
        frame = frame.with_columns(images=pl.Series([images for _, images in converted], dtype=IMAGES))
    return frame, padded

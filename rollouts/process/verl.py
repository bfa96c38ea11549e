"""verl files: RL prompts for `RLHFDataset` and multi-turn SFT for `MultiTurnSFTDataset`, as Parquet with native types.

Read by verl as they are (checked against verl's `rl_dataset.py` and `multiturn_sft_dataset.py`):
- RL (`rl/verl` -> `verl.parquet`): one row per prompt the RL selection kept (per distinct prompt of a task when a
  stateful environment gave its rollouts different ones): `data_source` (the environment, `agent_ref.name`),
  `prompt` (chat messages), `reward_model: {"style": "rule", "ground_truth"}` (`expected_answer` as text),
  `extra_info: {"index" (task index), "group_id", "need_tools_kwargs", "tools_kwargs": {tool: {"create_kwargs":
  {"ground_truth"}}}, "metadata" (the prompt's other fields, JSON text: never one rollout's results, see
  `prompt_fields`)}`.
- SFT (`sft/verl` -> `verl.parquet`): `messages` and `tools` per selected rollout. Tool-call `arguments` are objects:
  Hugging Face templates render them with `tojson` (Qwen2.5's does), so JSON text would be encoded twice and the model
  trained on `"{\"expression\": ...}"`. verl reads the file with pandas and hands every struct to the template as a
  dict with all its fields, so a row whose tools or arguments Parquet cannot store exactly (one struct type per
  column: shapes of other tools are padded with nulls, which the template prints) is left out and counted.
Prompt messages (RL) have one fixed struct (`role`, `content`, `tool_calls`, `tool_call_id`, `name`; absent fields
are null). Images become `<image>` placeholders in the content
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


def verl_messages(
    messages: list[Message], *, object_arguments: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """OpenAI-flavour messages as verl rows: text content with `<image>` placeholders, and the images in order; with
    `object_arguments`, tool-call arguments as objects (JSON text that is not an object stays text)."""
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
        calls = message.get("tool_calls")
        if calls and object_arguments:
            calls = [
                {**c, "function": {**c["function"], "arguments": _object(c["function"]["arguments"])}} for c in calls
            ]
        row = {
            "role": message["role"],
            "content": content or "",
            "tool_calls": calls,
            "tool_call_id": message.get("tool_call_id"),
            "name": message.get("name"),
        }
        out.append(row)
    return out, images


def _object(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments
    try:
        value = loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


def ground_truth(extra: dict[str, Any]) -> str | None:
    value = extra.get("expected_answer")
    return None if value is None else value if isinstance(value, str) else dumps(value)


# Fields a rollout row carries about that rollout, not its prompt: the collector's and the built-in verifiers'.
ROLLOUT_FIELDS = frozenset(
    {"end_reason", "tool_stats", "extracted_answer", "store_mismatches", "final_store", "calculator_calls"}
)


def prompt_fields(extras: list[str | None]) -> dict[str, Any]:
    """The prompt's own fields, from the `extra` objects of every rollout of one prompt (failed ones included).

    A rollout row mixes the input row's keys with what its verifier wrote, and only the input's are the prompt's: a
    field is kept when every rollout of the prompt carries it with one value (a failed rollout carries the input but
    no verifier result) and it is not a known per-rollout field. A prompt read from one rollout only keeps nothing
    but `agent_ref` and `expected_answer`: its input and its result cannot be told apart.
    """
    parsed = [loads(e) if e else {} for e in extras]
    if not parsed:
        return {}
    first, rest = parsed[0], parsed[1:]
    shared = {k: v for k, v in first.items() if k not in ROLLOUT_FIELDS and all(r.get(k, ...) == v for r in rest)}
    if not rest:
        shared = {k: v for k, v in shared.items() if k in ("agent_ref", "expected_answer")}
    return shared


def rl_prompt_row(
    prompt_messages: list[Message],
    tools: list[dict[str, Any]] | None,
    extra: dict[str, Any],
    task_index: int | None,
    group_id: str,
) -> dict[str, Any]:
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
    """(messages, tools) rows as the SFT Parquet frame, and how many rows were left out because one Parquet type
    cannot hold them exactly: tools or tool-call arguments of other shapes than the rest of the file (or of the same
    row) would be padded with null fields, which verl passes to the chat template as they are. Empty objects are
    dropped (`"properties": {}` means the same as no `properties`; Parquet has no struct without fields)."""
    converted = [verl_messages(messages, object_arguments=True) for messages, _ in rows]
    wanted = [
        {"messages": _prune_empty(m), "tools": _prune_empty(t) if t else None, "images": images or None}
        for (m, images), (_, t) in zip(converted, rows, strict=True)
    ]
    # rows by the Parquet type each has alone (rows that are not exact even alone are left out); then the largest
    # groups first, each kept when the file stays exact with it
    shapes: dict[str, list[int]] = {}
    for i, row in enumerate(wanted):
        alone = _sft_columns([row])
        if _same(alone.to_dicts()[0], row):
            shapes.setdefault(str(alone.schema), []).append(i)
    keep: list[int] = []
    for group in sorted(shapes.values(), key=len, reverse=True):
        trial = sorted(keep + group)
        frame = _sft_columns([wanted[i] for i in trial])
        if all(_same(got, wanted[i]) for got, i in zip(frame.to_dicts(), trial, strict=True)):
            keep = trial
    return _sft_columns([wanted[i] for i in keep]), len(wanted) - len(keep)


def _same(row: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(not row.get(k) if v is None else row.get(k) == v for k, v in want.items())


def _sft_columns(rows: list[dict[str, Any]]) -> pl.DataFrame:
    messages = pl.Series("messages", [r["messages"] for r in rows], strict=False)
    if not rows:
        messages = pl.Series("messages", [], dtype=pl.List(MESSAGE))
    frame = pl.DataFrame([messages])
    if any(r["tools"] for r in rows):
        frame = frame.with_columns(pl.Series("tools", [r["tools"] or [] for r in rows], strict=False))
    if any(r["images"] for r in rows):
        frame = frame.with_columns(images=pl.Series([r["images"] or [] for r in rows], dtype=IMAGES))
    return frame

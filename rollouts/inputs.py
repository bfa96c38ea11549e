"""Input: read prompt rows lazily, validate each (bad rows become rejects with their line number), cut shards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from rollouts.errors import InputError, RowError
from rollouts.records import SAMPLING_FIELDS, Prompt, dumps
from rollouts.storage import filesystem

_NUMERIC_SAMPLING = {"temperature": (float, int), "top_p": (float, int), "max_output_tokens": (int,), "seed": (int,)}


def input_digest(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 of the input's bytes: the run is identified by what it reads, not by the file's name."""
    fs, path = filesystem(url, storage_options)
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as exc:
        raise InputError(f"input {url!r} does not exist: check the path") from exc
    except (OSError, PermissionError) as exc:
        raise InputError(f"cannot read input {url!r}: {exc}") from exc
    return digest.hexdigest()


def iter_lines(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line, streamed."""
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                text = raw.decode("utf-8", errors="replace").strip()
                if text:
                    yield number, text
    except FileNotFoundError as exc:
        raise InputError(f"input {url!r} does not exist: check the path") from exc
    except OSError as exc:
        raise InputError(f"cannot read input {url!r}: {exc}") from exc


def _content_ok(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(isinstance(part, dict) for part in content)


def _check_items(items: Any, key: str) -> None:
    if isinstance(items, str):
        if not items.strip():
            raise RowError(f"`{key}` is an empty string")
        return
    if not isinstance(items, list) or not items:
        raise RowError(f"`{key}` must be a non-empty string or a non-empty list of messages")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RowError(f"`{key}[{i}]` must be an object, got {type(item).__name__}")
        if "role" in item:
            if not isinstance(item["role"], str) or not _content_ok(item.get("content")):
                raise RowError(f"`{key}[{i}]` needs a string `role` and a string or list `content`")
        elif "type" not in item:
            raise RowError(f"`{key}[{i}]` has neither `role` nor `type`")


def normalise_row(raw: Any) -> dict[str, Any]:
    """A NeMo Gym row as-is; `{"prompt": ...}` and `{"messages": [...]}` rows become `responses_create_params`."""
    if not isinstance(raw, dict):
        raise RowError(f"a row must be a JSON object, got {type(raw).__name__}")
    row = dict(raw)
    if "responses_create_params" in row:
        params = row["responses_create_params"]
        if not isinstance(params, dict):
            raise RowError("`responses_create_params` must be an object")
        if "input" not in params:
            raise RowError("`responses_create_params` has no `input`")
        _check_items(params["input"], "responses_create_params.input")
    elif "prompt" in row:
        prompt = row.pop("prompt")
        _check_items(prompt, "prompt")
        row["responses_create_params"] = params = {"input": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt}
    elif "messages" in row:
        messages = row.pop("messages")
        _check_items(messages, "messages")
        row["responses_create_params"] = params = {"input": messages}
    else:
        raise RowError("missing input: expected `responses_create_params.input`, `prompt` or `messages`")
    if "tools" in params and not isinstance(params["tools"], list):
        raise RowError("`responses_create_params.tools` must be a list")
    for name in SAMPLING_FIELDS:
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMERIC_SAMPLING[name])):
            raise RowError(f"`responses_create_params.{name}` must be a number, got {value!r}")
    agent = row.get("agent_ref")
    if agent is not None and not (isinstance(agent, dict) and isinstance(agent.get("name"), str)):
        raise RowError('`agent_ref` must be an object with a string `name`, e.g. {"name": "math"}')
    index = row.get("_ng_task_index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise RowError(f"`_ng_task_index` must be a non-negative integer, got {index!r}")
    return row


def parse_prompts(
    lines: Iterator[tuple[int, str]],
    *,
    default_env: str,
    known_envs: set[str],
    start: int = 0,
    end: int | None = None,
    limit: int | None = None,
    on_reject: Callable[[dict[str, Any]], None],
) -> Iterator[Prompt]:
    """Valid prompts in input order, lazily; each bad row goes to `on_reject` with its line number and raw text."""
    seen: set[int] = set()
    accepted = 0
    for ordinal, (line, text) in enumerate(lines):
        if ordinal < start:
            continue
        if (end is not None and ordinal >= end) or (limit is not None and accepted >= limit):
            return
        try:
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RowError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
            row = normalise_row(raw)
            env = (row.get("agent_ref") or {}).get("name") or default_env
            if env not in known_envs:
                raise RowError(f"unknown environment {env!r}: use one of {sorted(known_envs)} or declare it with --remote-env {env}=URL")
            row.setdefault("agent_ref", {"name": env})
            task_index = row.get("_ng_task_index", ordinal)
            if task_index in seen:
                raise RowError(f"duplicate _ng_task_index {task_index}")
            seen.add(task_index)
            row["_ng_task_index"] = task_index
        except RowError as exc:
            on_reject({"line": line, "error": exc.message, "raw": text})
            continue
        accepted += 1
        yield Prompt(task_index=task_index, line=line, env=env, row=row)


def prompt_line(prompt: Prompt) -> str:
    return dumps(prompt.model_dump())


"""Input: read prompt rows lazily, validate each (bad rows become rejects with their line number), cut shards.

Whatever a line holds, it is a prompt or a reject, never a crash and never silently changed data: a row must parse
as strict JSON (no NaN, no infinities such as 1e999), decode as UTF-8 (a UTF-8 byte-order mark on the first line
is accepted), and re-serialise exactly as it was read (integers within 64 bits, no lone UTF-16 surrogates, at most
255 levels of nesting), or it is rejected with its line number, the reason and its raw text.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from rollouts.errors import InputError, RowError
from rollouts.records import SAMPLING_FIELDS, Prompt, dumps
from rollouts.storage import filesystem

BOM = b"\xef\xbb\xbf"
_JSON_SPACE = b" \t\r\n"
_LONG_INTEGER = re.compile(r"\d{19,}")  # orjson reads integers beyond 64 bits as floats, silently: re-read exactly
RAW_LIMIT = 1 << 20  # characters of a rejected line kept in rejects.jsonl

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


def iter_lines(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[int, str | bytes]]:
    """(1-based line number, text) of every non-blank line, streamed; a line that is not valid UTF-8 comes as its
    bytes, for `parse_prompts` to reject (replacing the bad bytes would change the data silently)."""
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number == 1 and raw.startswith(BOM):
                    raw = raw[len(BOM) :]
                raw = raw.strip(_JSON_SPACE)
                if not raw:
                    continue
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield number, raw
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


def _check_tools(tools: Any) -> None:
    """Tools as the model server and a resources server will read them: a malformed one is this row's reject, not
    an InternalError or an HTTP 400 of every rollout of the row."""
    if not isinstance(tools, list):
        raise RowError("`responses_create_params.tools` must be a list")
    for i, tool in enumerate(tools):
        where = f"`responses_create_params.tools[{i}]`"
        if not isinstance(tool, dict) or not isinstance(tool.get("type", "function"), str):
            raise RowError(f"{where} must be an object with a string `type`, got {tool!r:.60}")
        if tool.get("type", "function") != "function":
            continue  # a hosted tool (web_search...): the server checks its own fields
        spec = tool.get("function", tool)  # chat style nests the function; Responses style does not
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise RowError(f"{where} is a function tool without a string `name`")
        if spec.get("parameters") is not None and not isinstance(spec["parameters"], dict):
            raise RowError(f"{where} ({spec['name']}): `parameters` must be a JSON Schema object")


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
        row["responses_create_params"] = params = {
            "input": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        }
    elif "messages" in row:
        messages = row.pop("messages")
        _check_items(messages, "messages")
        row["responses_create_params"] = params = {"input": messages}
    else:
        raise RowError("missing input: expected `responses_create_params.input`, `prompt` or `messages`")
    if "tools" in params:
        _check_tools(params["tools"])
    instructions = params.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RowError(f"`responses_create_params.instructions` must be a string, got {instructions!r:.60}")
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


def _reject_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RowError(f"number {text} is out of range (it would become infinity)")
    return value


def _reject_constant(name: str) -> Any:
    raise RowError(f"{name} is not valid JSON")


def parse_json(text: str | bytes) -> Any:
    """One row's JSON, strictly: a RowError for anything that is not JSON or would not survive being written back."""
    if isinstance(text, bytes):
        error = _utf8_error(text)
        raise RowError(f"invalid UTF-8 at byte offset {error.start}: {text[error.start : error.start + 4]!r}")
    try:
        if _LONG_INTEGER.search(text):
            value = json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant)
        else:
            value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:  # a subclass of json's: first
        raise RowError(f"invalid JSON: {_orjson_reason(exc)}") from None
    except json.JSONDecodeError as exc:
        raise RowError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RowError("nested too deeply to read") from None
    return value


def _utf8_error(data: bytes) -> UnicodeDecodeError:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("valid UTF-8")  # pragma: no cover


def _orjson_reason(exc: orjson.JSONDecodeError) -> str:
    message = exc.msg
    if "infinity" in message:
        return f"a number is out of range (it would become infinity) at column {exc.colno}"
    if message.startswith("unexpected character") and exc.doc[exc.pos : exc.pos + 3] in ("NaN", "Inf", "-In"):
        return f"NaN and Infinity are not valid JSON (column {exc.colno})"
    if "surrogate" in message:
        return f"a lone UTF-16 surrogate escape is not valid Unicode (column {exc.colno})"
    return f"{message} at column {exc.colno}"


def writable(row: dict[str, Any]) -> str:
    """The row as the JSON line the run stores; a RowError when it cannot be written back unchanged."""
    try:
        return dumps(row)
    except orjson.JSONEncodeError as exc:
        message = str(exc)
        if "64-bit" in message:
            raise RowError("an integer does not fit in 64 bits (it would not survive being written back)") from None
        if "surrogates" in message:
            raise RowError(
                "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode"
            ) from None
        if "Recursion" in message:
            raise RowError("nested deeper than 255 levels") from None
        raise RowError(f"cannot be written back as JSON: {message}") from None


def raw_text(text: str | bytes) -> str:
    """A rejected line as text for rejects.jsonl: undecodable bytes shown as \\x escapes, very long lines cut."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= RAW_LIMIT else text[:RAW_LIMIT]


def parse_prompts(
    lines: Iterator[tuple[int, str | bytes]],
    *,
    default_env: str,
    known_envs: Mapping[str, Any] | set[str],
    start: int = 0,
    end: int | None = None,
    limit: int | None = None,
    on_reject: Callable[[dict[str, Any]], None],
) -> Iterator[Prompt]:
    """Valid prompts in input order, lazily; each bad row goes to `on_reject` with its line number and raw text.

    `known_envs` maps environment names to environments (`envs.build_environments`); a row its environment cannot
    ever score (`Environment.row_problem`, e.g. math without `expected_answer`) is a reject too. A set of names
    checks the names only.
    """
    seen: set[int] = set()
    accepted = 0
    for ordinal, (line, text) in enumerate(lines):
        if ordinal < start:
            continue
        if (end is not None and ordinal >= end) or (limit is not None and accepted >= limit):
            return
        try:
            row = normalise_row(parse_json(text))
            env = (row.get("agent_ref") or {}).get("name") or default_env
            if env not in known_envs:
                raise RowError(
                    f"unknown environment {env!r}: use one of {sorted(known_envs)} "
                    f"or declare it with --remote-env {env}=URL"
                )
            problem = known_envs[env].row_problem(row) if isinstance(known_envs, Mapping) else None
            if problem:
                raise RowError(problem)
            row.setdefault("agent_ref", {"name": env})
            task_index = row.get("_ng_task_index", ordinal)
            if task_index in seen:
                raise RowError(f"duplicate _ng_task_index {task_index}")
            row["_ng_task_index"] = task_index
            writable(row)
            seen.add(task_index)
        except RowError as exc:
            on_reject({"line": line, "error": exc.message, "raw": raw_text(text)})
            continue
        except Exception as exc:  # whatever a hostile row does to the checks above, it is one reject, not a crash
            on_reject(
                {
                    "line": line,
                    "error": f"unreadable row ({type(exc).__name__}: {str(exc)[:200]})",
                    "raw": raw_text(text),
                }
            )
            continue
        accepted += 1
        yield Prompt(task_index=task_index, line=line, env=env, row=row)


def prompt_line(prompt: Prompt) -> str:
    return dumps(prompt.model_dump())

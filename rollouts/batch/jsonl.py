"""Batch input files: one request line per custom_id, split by a provider's per-file limits; output lines read back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
# OpenAI's limits per batch input file; Azure OpenAI and other providers differ, hence BatchLimits.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024**2


class BatchInputError(ValueError):
    """A request that cannot go in a batch file as given (streaming, no model, not a JSON object)."""


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Most requests and bytes (newlines included) one batch input file may hold."""

    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError("batch limits must be positive")


@dataclass(frozen=True, slots=True)
class BatchFile:
    """The bytes of one batch input file and the custom_ids of its lines, in order."""

    custom_ids: tuple[str, ...]
    data: bytes


def check_endpoint(endpoint: str) -> str:
    """The endpoint, if batch mode serves it: Chat Completions or Responses (Azure spells them without /v1)."""
    if not endpoint.endswith(("/chat/completions", "/responses")) or not endpoint.startswith("/"):
        raise BatchInputError(f"batch mode serves /v1/chat/completions and /v1/responses, not {endpoint!r}")
    return endpoint


def request_line(custom_id: str, endpoint: str, body: Mapping[str, Any]) -> bytes:
    """One input line, `{"custom_id", "method", "url", "body"}`, with its newline."""
    if not isinstance(custom_id, str) or not custom_id:
        raise BatchInputError("a batch request needs a non-empty string custom_id")
    if not isinstance(body, Mapping):
        raise BatchInputError(f"request {custom_id}: the body must be a JSON object")
    if body.get("stream"):
        raise BatchInputError(f"request {custom_id}: batch requests cannot stream; drop stream=true")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BatchInputError(f"request {custom_id}: the body needs a model")
    line = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": dict(body)}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def split_sizes(sizes: Iterable[tuple[str, int]], limits: BatchLimits) -> tuple[list[list[str]], list[str]]:
    """(custom_ids per file, custom_ids of lines that alone pass `limits.max_bytes`) from (custom_id, line bytes),
    filling each file in order up to both limits."""
    groups: list[list[str]] = []
    too_large: list[str] = []
    size = 0
    for custom_id, length in sizes:
        if length > limits.max_bytes:
            too_large.append(custom_id)
            continue
        if not groups or len(groups[-1]) >= limits.max_requests or size + length > limits.max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(custom_id)
        size += length
    return groups, too_large


def split_lines(lines: Iterable[tuple[str, bytes]], limits: BatchLimits) -> tuple[list[BatchFile], list[str]]:
    """The files `split_sizes` makes of (custom_id, line) pairs, with their bytes."""
    by_id = dict(lines)
    groups, too_large = split_sizes(((custom_id, len(line)) for custom_id, line in by_id.items()), limits)
    return [BatchFile(tuple(ids), b"".join(by_id[custom_id] for custom_id in ids)) for ids in groups], too_large


def build_files(
    requests: Mapping[str, Mapping[str, Any]], endpoint: str, limits: BatchLimits | None = None
) -> tuple[list[BatchFile], list[str]]:
    """Batch input files for `requests` (custom_id -> request body) and the custom_ids too large for any file."""
    check_endpoint(endpoint)
    return split_lines(
        ((custom_id, request_line(custom_id, endpoint, body)) for custom_id, body in requests.items()),
        limits or BatchLimits(),
    )


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One line of a batch output or error file."""

    custom_id: str
    status_code: int | None  # the request's HTTP status; None when it never ran (error set instead)
    body: dict[str, Any] | None  # the reply body, as a live call returns it (or the error body of a non-2xx)
    error: dict[str, Any] | None  # {"code", "message"} for a request that failed outside HTTP (expired, ...)
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and isinstance(self.body, dict)


def read_results(data: bytes) -> Iterator[ResultLine]:
    """The lines of an output or error file; lines that are not results are skipped."""
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            continue
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        error = line.get("error") if isinstance(line.get("error"), dict) else None
        status = response.get("status_code") if response else None
        body = response.get("body") if response else None
        yield ResultLine(
            line["custom_id"],
            status if isinstance(status, int) else None,
            body if isinstance(body, dict) else None,
            error,
            str(response["request_id"]) if response and response.get("request_id") else None,
        )

"""An async client for the OpenAI Files and Batch APIs (OpenAI, Azure OpenAI, and compatible servers) over httpx."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from rollouts.batch.results import retryable_status
from rollouts.errors import ConfigError

TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_SNIPPET_CHARS = 300
T = TypeVar("T")


class BatchAPIError(Exception):
    """A Files or Batch API call that failed: `status_code` is None when no answer came; the key is never in it."""

    def __init__(self, message: str, status_code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable


class RequestCounts(BaseModel):
    model_config = ConfigDict(extra="ignore")

    total: int = 0
    completed: int = 0
    failed: int = 0


class FileObject(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    bytes: int = 0
    created_at: int = 0
    filename: str = ""
    purpose: str = ""


class BatchObject(BaseModel):
    """A batch as the API returns it (fields this package reads; the rest are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str
    endpoint: str = ""
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    request_counts: RequestCounts | None = None
    errors: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def error_list(self) -> list[dict[str, Any]]:
        data = (self.errors or {}).get("data")
        return [error for error in data if isinstance(error, dict)] if isinstance(data, list) else []

    def timeline(self) -> dict[str, int]:
        """The batch's timestamps that are set: created_at, in_progress_at, ..., completed_at."""
        names = (
            "created_at",
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        )
        return {name: value for name in names if isinstance(value := getattr(self, name), int) and value}


class BatchList(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[BatchObject] = Field(default_factory=list)
    has_more: bool = False
    last_id: str | None = None


ABSENT = frozenset({404, 405, 501})  # no such route; vLLM's own Batch API answers 501 when it is not enabled


def check_batch_api(base_url: str, headers: Mapping[str, str], timeout: float = 10.0) -> None:
    """Fail fast for --batch, before anything is sharded or uploaded: the server must list its files and its
    batches (`GET /files`, `GET /batches`, one item each). A server without them (vLLM or SGLang without a batch
    front, a proxy that forwards only completions) is a one-line ConfigError naming the route that is missing; a
    key that may not use them is one too. Rate limits and 5xx are left to the run's own retries."""
    base = base_url.rstrip("/")
    for route in ("files", "batches"):
        url = f"{base}/{route}"
        try:
            response = httpx.get(url, params={"limit": 1}, headers=dict(headers), timeout=timeout)
        except httpx.HTTPError as exc:
            raise ConfigError(f"--batch: cannot reach {url} ({type(exc).__name__})") from exc
        status = response.status_code
        if status in ABSENT:
            raise ConfigError(
                f"--batch: {base} has no Batch API (GET {url} answered {status}): batch mode needs /files and "
                "/batches (OpenAI, Azure OpenAI, a LiteLLM proxy); drop --batch to send live calls"
            )
        if status in (401, 403):
            raise ConfigError(
                f"--batch: {base} refused GET {url} (HTTP {status}): the key in --api-key-env may not use the "
                "Files and Batch APIs"
            )
        if 200 <= status < 300 and not _is_list(response):
            raise ConfigError(
                f"--batch: GET {url} answered {status} without a list of {route}: is --model-url the provider's "
                "OpenAI-compatible base URL?"
            )


def _is_list(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("data"), list)


class BatchAPI:
    """Files and Batch API calls against `base_url` (ending in /v1, or Azure's /openai/v1), with retries.

    The key goes into the Authorization header of the httpx client only: it is not stored elsewhere, not logged,
    and masked in every error message. GETs and cancels are retried on connection errors, 408/409/425/429 and 5xx;
    uploads too (a lost answer leaves an unused file, nothing worse); creating a batch never is (BatchRunner looks
    for the batch before creating it again). A caller's `client` (its headers, e.g. an Azure `api-key`) is closed with
    this object when `owns_client`; `secrets` are masked like the key.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        retries: int = 5,
        backoff_s: float = 1.0,
        client: httpx.AsyncClient | None = None,
        secrets: Iterable[str] = (),
        owns_client: bool = False,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The key, and any other credential the caller's client sends (its headers): masked in every message.
        self._secrets = tuple(s for s in (api_key, *secrets) if s and len(s) >= 4)
        self._own_client = client is None or owns_client
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._client.headers.update(headers)
        self._base = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"BatchAPI({self._base!r})"

    async def __aenter__(self) -> BatchAPI:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def redact(self, text: str) -> str:
        """`text` with the key and any bearer token masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _BEARER.sub(r"\1***", text)

    async def _call(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._client.request(method, f"{self._base}{path}", **kwargs)
            except httpx.HTTPError as exc:
                error = BatchAPIError(self.redact(f"{method} {path}: {type(exc).__name__}: {exc}"), None, True)
            else:
                if response.is_success:
                    return response
                snippet = self.redact(response.text[:_SNIPPET_CHARS])
                error = BatchAPIError(
                    f"{method} {path}: HTTP {response.status_code}: {snippet}",
                    response.status_code,
                    retryable_status(response.status_code),
                )
            if not (retry and error.retryable) or attempt >= self.retries:
                raise error
            await asyncio.sleep(min(30.0, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2))
            attempt += 1

    async def _json(self, method: str, path: str, model: Callable[[Any], T], *, retry: bool = True, **kwargs: Any) -> T:
        response = await self._call(method, path, retry=retry, **kwargs)
        try:
            return model(response.json())
        except ValueError as exc:
            raise BatchAPIError(
                self.redact(f"{method} {path}: unreadable answer: {exc}"[:500]), response.status_code, True
            ) from None

    async def upload(self, data: bytes, filename: str) -> FileObject:
        files = {"file": (filename, data, "application/jsonl")}
        return await self._json("POST", "/files", FileObject.model_validate, data={"purpose": "batch"}, files=files)

    async def file(self, file_id: str) -> FileObject:
        return await self._json("GET", f"/files/{file_id}", FileObject.model_validate)

    async def content(self, file_id: str) -> bytes:
        return (await self._call("GET", f"/files/{file_id}/content", retry=True)).content

    async def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str] | None = None) -> BatchObject:
        body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h"}
        if metadata:
            body["metadata"] = metadata
        return await self._json("POST", "/batches", BatchObject.model_validate, retry=False, json=body)

    async def retrieve(self, batch_id: str) -> BatchObject:
        return await self._json("GET", f"/batches/{batch_id}", BatchObject.model_validate)

    async def cancel(self, batch_id: str) -> BatchObject:
        return await self._json("POST", f"/batches/{batch_id}/cancel", BatchObject.model_validate)

    async def list_batches(self, after: str | None = None, limit: int = 100) -> BatchList:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return await self._json("GET", "/batches", BatchList.model_validate, params=params)

    async def find_by_input_file(self, input_file_id: str, since: int = 0, max_pages: int = 50) -> BatchObject | None:
        """The batch created from `input_file_id`, searching the newest batches back to `since` (minus a margin)."""
        after: str | None = None
        for _ in range(max_pages):
            page = await self.list_batches(after=after)
            for batch in page.data:
                if batch.input_file_id == input_file_id:
                    return batch
            if not page.has_more or not page.data or page.data[-1].created_at < since - 600:
                return None
            after = page.data[-1].id
        return None


async def maybe_await(value: Awaitable[None] | None) -> None:
    """Await what a callback returned, if it is awaitable (callbacks may be plain or async functions)."""
    if value is not None:
        await value

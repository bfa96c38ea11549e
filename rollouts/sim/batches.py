"""The simulated server's Files and Batch APIs: uploads, batches processed in memory through the live answer code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import BodyPartReader, web


class BatchOptions(Protocol):
    """The SimConfig fields batches use."""

    @property
    def seed(self) -> int: ...
    @property
    def batch_delay_s(self) -> float: ...
    @property
    def batch_fail_rate(self) -> float: ...
    @property
    def batch_expire(self) -> int: ...
    @property
    def batch_max_requests(self) -> int: ...


# (url, request body) -> (HTTP status, response body): the server's live answer, without live faults and latency.
Answer = Callable[[str, bytes], Awaitable[tuple[int, dict[str, Any]]]]

ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
MAX_FILE_BYTES = 200 * 1024**2
_PURPOSES = frozenset({"batch", "fine-tune", "assistants", "vision", "user_data", "evals"})
_TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
_MAX_TRACKED_BODIES = 200_000


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _not_found(kind: str, object_id: str) -> web.Response:
    return _json(error_body(f"No such {kind} object: {object_id}", code="not_found"), status=404)


@dataclass
class SimFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class SimBatch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, Any] | None
    expires: bool  # expires after the delay with half its requests done
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, ...
    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None

    def mark(self, status: str) -> None:
        self.status = status
        self.times[f"{status}_at"] = int(time.time())

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 24 * 3600,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for name in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"):
            body[f"{name}_at"] = self.times.get(f"{name}_at")
        return body


class BatchStore:
    """Files and batches kept in memory; each batch is processed by a task on the server's loop."""

    def __init__(self, config: BatchOptions, answer: Answer) -> None:
        self.config = config
        self.answer = answer
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._attempts: dict[bytes, int] = {}  # body digest -> failures so far, so a resubmission draws afresh

    def install(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files", self.list_files)
        app.router.add_get("/v1/files/{file_id}", self.get_file)
        app.router.add_get("/v1/files/{file_id}/content", self.file_content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self.retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self.cancel)
        app.on_cleanup.append(self._stop)

    async def _stop(self, app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Files

    async def upload(self, request: web.Request) -> web.Response:
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError) as exc:
            return _json(error_body(f"expected a multipart/form-data body: {exc}"), status=400)
        purpose, filename, data = None, "upload.jsonl", b""
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        return _json(error_body(f"file exceeds the {MAX_FILE_BYTES} byte limit"), status=400)
                    chunks.append(chunk)
                data = b"".join(chunks)
        if purpose not in _PURPOSES:
            return _json(error_body(f"purpose must be one of {sorted(_PURPOSES)}", code="invalid_purpose"), status=400)
        if not data:
            return _json(error_body("missing file, or the file is empty"), status=400)
        sim_file = SimFile(_new_id("file-"), filename, purpose, data)
        self.files[sim_file.id] = sim_file
        return _json(sim_file.public())

    async def list_files(self, request: web.Request) -> web.Response:
        """Newest first, `purpose` and `limit` as OpenAI's list takes them."""
        try:
            limit = min(max(int(request.query.get("limit", "10000")), 1), 10000)
        except ValueError:
            return _json(error_body("limit must be an integer"), status=400)
        purpose = request.query.get("purpose")
        files = [f for f in reversed(self.files.values()) if purpose is None or f.purpose == purpose]
        page = files[:limit]
        return _json(
            {
                "object": "list",
                "data": [f.public() for f in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(files) > limit,
            }
        )

    async def get_file(self, request: web.Request) -> web.Response:
        sim_file = self.files.get(request.match_info["file_id"])
        return _json(sim_file.public()) if sim_file else _not_found("File", request.match_info["file_id"])

    async def file_content(self, request: web.Request) -> web.Response:
        sim_file = self.files.get(request.match_info["file_id"])
        if sim_file is None:
            return _not_found("File", request.match_info["file_id"])
        return web.Response(body=sim_file.data, content_type="application/octet-stream")

    # Batches

    async def create(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _json(error_body(f"invalid JSON body: {exc}"), status=400)
        if not isinstance(payload, dict):
            return _json(error_body("the request body must be a JSON object"), status=400)
        file_id, endpoint = payload.get("input_file_id"), payload.get("endpoint")
        if endpoint not in ENDPOINTS:
            return _json(error_body(f"endpoint must be one of {list(ENDPOINTS)}", code="invalid_value"), status=400)
        if payload.get("completion_window") != "24h":
            return _json(error_body("completion_window must be '24h'", code="invalid_value"), status=400)
        metadata = payload.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            return _json(error_body("metadata must be an object of at most 16 pairs"), status=400)
        sim_file = self.files.get(file_id) if isinstance(file_id, str) else None
        if sim_file is None:
            return _not_found("File", str(file_id))
        if sim_file.purpose != "batch":
            return _json(error_body("the input file must be uploaded with purpose 'batch'"), status=400)
        expire = self.config.batch_expire
        expires = expire == -1 or len(self.batches) < expire
        batch = SimBatch(_new_id("batch_"), endpoint, sim_file.id, metadata, expires)
        self.batches[batch.id] = batch
        task = asyncio.get_running_loop().create_task(self._process(batch, sim_file.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json(batch.public())

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        return _json(batch.public()) if batch else _not_found("Batch", request.match_info["batch_id"])

    async def list_batches(self, request: web.Request) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 100)
        except ValueError:
            return _json(error_body("limit must be an integer"), status=400)
        newest_first = list(reversed(self.batches.values()))
        after = request.query.get("after")
        if after:
            ids = [batch.id for batch in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        page = newest_first[:limit]
        return _json(
            {
                "object": "list",
                "data": [batch.public() for batch in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest_first) > limit,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _not_found("Batch", request.match_info["batch_id"])
        if batch.status in ("completed", "failed", "expired"):
            return _json(error_body(f"Cannot cancel a batch with status '{batch.status}'."), status=400)
        if batch.status not in ("cancelling", "cancelled"):
            batch.mark("cancelling")
        return _json(batch.public())

    # Processing

    def _validate(self, batch: SimBatch, data: bytes) -> list[dict[str, Any]]:
        """The input file's request lines, or none with `batch.errors` filled in."""
        lines, seen = [], set()
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                batch.errors.append(
                    {
                        "code": "invalid_json_line",
                        "line": number,
                        "param": None,
                        "message": "This line is not parseable as valid JSON.",
                    }
                )
                continue
            if (
                not isinstance(line, dict)
                or not isinstance(line.get("custom_id"), str)
                or line.get("method") != "POST"
                or not isinstance(line.get("body"), dict)
            ):
                batch.errors.append(
                    {
                        "code": "invalid_request",
                        "line": number,
                        "param": None,
                        "message": "Each line needs a string custom_id, method POST and an object body.",
                    }
                )
            elif line.get("url") != batch.endpoint:
                batch.errors.append(
                    {
                        "code": "mismatched_endpoint",
                        "line": number,
                        "param": "url",
                        "message": f"The url must match the batch endpoint {batch.endpoint}.",
                    }
                )
            elif line["custom_id"] in seen:
                batch.errors.append(
                    {
                        "code": "duplicate_custom_id",
                        "line": number,
                        "param": "custom_id",
                        "message": "The custom_id of each request must be unique within a batch.",
                    }
                )
            else:
                seen.add(line["custom_id"])
                lines.append(line)
        if not lines and not batch.errors:
            batch.errors.append({"code": "empty_file", "line": None, "param": None, "message": "The file is empty."})
        if len(lines) > self.config.batch_max_requests:
            batch.errors.append(
                {
                    "code": "too_many_requests",
                    "line": None,
                    "param": None,
                    "message": f"A batch holds at most {self.config.batch_max_requests} requests.",
                }
            )
        return [] if batch.errors else lines

    def _fails(self, body: bytes) -> bool:
        """Draw whether this request fails, from (seed, body, attempt): a resubmitted request draws afresh."""
        rate = self.config.batch_fail_rate
        if not rate:
            return False
        key = hashlib.blake2b(body, digest_size=16).digest()
        attempt = self._attempts.get(key, 0)
        seed = hashlib.blake2b(f"{self.config.seed}\x1fbatch\x1f{key.hex()}\x1f{attempt}".encode(), digest_size=8)
        if random.Random(int.from_bytes(seed.digest(), "big")).random() >= rate:
            self._attempts.pop(key, None)
            return False
        if len(self._attempts) >= _MAX_TRACKED_BODIES:
            self._attempts.pop(next(iter(self._attempts)))
        self._attempts[key] = attempt + 1
        return True

    async def _run_line(self, batch: SimBatch, line: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(line["body"], separators=(",", ":")).encode()
        if self._fails(body):
            status, reply = 500, error_body("simulated batch request failure", "server_error")
        else:
            try:
                status, reply = await self.answer(batch.endpoint, body)
            except Exception:  # a bug in the answer code fails the request, never the whole batch
                status, reply = 500, error_body("internal error in rollouts-sim", "server_error")
        if status == 200:
            batch.completed += 1
        else:
            batch.failed += 1
        response = {"status_code": status, "request_id": _new_id("req_"), "body": reply}
        return {"id": _new_id("batch_req_"), "custom_id": line["custom_id"], "response": response, "error": None}

    async def _process(self, batch: SimBatch, data: bytes) -> None:
        await asyncio.sleep(0)  # the create call answers "validating" first
        lines = self._validate(batch, data)
        if not lines:
            batch.mark("failed")
            return
        batch.total = len(lines)
        if batch.status == "cancelling":
            return await self._finish(batch, [], "cancelled")
        batch.mark("in_progress")
        started, delay = time.monotonic(), self.config.batch_delay_s
        runs = len(lines) // 2 if batch.expires else len(lines)
        results: list[dict[str, Any]] = []
        for index, line in enumerate(lines[:runs]):
            wait = started + delay * (index + 1) / len(lines) - time.monotonic()
            await asyncio.sleep(max(wait, 0.0))
            if batch.status == "cancelling":
                return await self._finish(batch, results, "cancelled")
            results.append(await self._run_line(batch, line))
        if batch.expires:
            await asyncio.sleep(max(started + delay - time.monotonic(), 0.0))
            message = "This request could not be executed before the completion window expired."
            for line in lines[runs:]:
                results.append(
                    {
                        "id": _new_id("batch_req_"),
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": "batch_expired", "message": message},
                    }
                )
            return await self._finish(batch, results, "expired")
        batch.mark("finalizing")
        await asyncio.sleep(min(delay / 10, 0.05))
        await self._finish(batch, results, "completed")

    async def _finish(self, batch: SimBatch, results: list[dict[str, Any]], status: str) -> None:
        """Write the output file (2xx replies) and the error file (the rest), then enter the final status."""
        outputs = [line for line in results if line["response"] and line["response"]["status_code"] == 200]
        errors = [line for line in results if not (line["response"] and line["response"]["status_code"] == 200)]
        for lines, attribute in ((outputs, "output_file_id"), (errors, "error_file_id")):
            if lines:
                data = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
                kind = "output" if attribute == "output_file_id" else "error"
                sim_file = SimFile(_new_id("file-"), f"{batch.id}_{kind}.jsonl", "batch_output", data)
                self.files[sim_file.id] = sim_file
                setattr(batch, attribute, sim_file.id)
        batch.mark(status)

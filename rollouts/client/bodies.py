"""Reply bodies read under a byte cap: declared, streamed or compressed, nothing is read or inflated past the cap.

Model replies (`--max-response-bytes`) and resources-server replies (the same cap) both come through `read_capped`.
A compressed body is inflated here, a bounded piece at a time, rather than by httpx's decoder: httpx inflates each
network chunk whole, so a small gzip chunk could become hundreds of megabytes before any cap was checked (a 2 GB
gzip reply reached twice the cap per request in flight).
"""

from __future__ import annotations

import zlib

import httpx

from rollouts.errors import ResponseTooLarge

_INFLATE_STEP = 1 << 16  # output bytes produced per decompress call: the most a cap check can lag behind
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(response: httpx.Response, limit: int, read: int | None = None, what: str = "reply body") -> Exception:
    seen = f" (stopped reading at {read:,})" if read is not None else ""
    return ResponseTooLarge(
        f"{what} over --max-response-bytes {limit:,}{seen}", status_code=response.status_code, retryable=False
    )


async def read_capped(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The body, refusing (or, with `truncate`, cutting) it past `limit` bytes without reading the rest."""
    declared = response.headers.get("content-length")
    length = int(declared) if declared and declared.isdigit() else None
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if length is not None and length > limit and not truncate:
        raise ResponseTooLarge(
            f"reply body of {length:,} bytes is over --max-response-bytes {limit:,}",
            status_code=response.status_code,
            retryable=False,
        )
    if length is not None and length <= limit and not encoding:
        if isinstance(response.stream, httpx.ByteStream):  # the usual case: the transport read it whole already
            return b"".join(response.stream)
        return await response.aread()
    if encoding in _ZLIB_WBITS:
        return await _inflate_capped(response, limit, _ZLIB_WBITS[encoding], truncate)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise _too_large(response, limit, size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _inflate_capped(response: httpx.Response, limit: int, wbits: int, truncate: bool) -> bytes:
    """Inflate the raw (still compressed) stream at most `_INFLATE_STEP` bytes at a time, stopping at `limit`."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    raw_read = 0
    async for raw in response.aiter_raw():
        raw_read += len(raw)
        if raw_read > limit and not truncate:  # compressed larger than the cap: its inflated size is larger still
            raise _too_large(response, limit, raw_read, "compressed reply body")
        pending = raw
        while pending:
            try:
                piece = inflater.decompress(pending, _INFLATE_STEP)
            except zlib.error as exc:
                raise httpx.DecodingError(f"cannot inflate the reply body: {exc}") from None
            pending = inflater.unconsumed_tail
            out += piece
            if len(out) > limit:
                if truncate:
                    return bytes(out[:limit])
                raise _too_large(response, limit, len(out), "inflated reply body")
            if inflater.eof:
                return bytes(out)
    return bytes(out)

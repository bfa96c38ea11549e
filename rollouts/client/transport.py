"""The collector's HTTP stack: an httpx client over an aiohttp transport, without per-request work it never needs.

httpx stays the client API (`post`, `build_request`/`send`, `httpx.Response`, `MockTransport` in tests); these two
classes drop what a rollout's requests pay for and never use. py-spy at `--parallel 256` put 34 % of the collector's
busy samples in httpx (the bare aiohttp client spends none there):
  * the client's cookie jar: ~10 % (httpx builds a `urllib.request.Request` and an `email.message.Message` for
    every response to find no Set-Cookie). Rollouts never share cookies: a remote environment's session cookies
    are kept per rollout and sent explicitly (rollouts.envs.remote), so `CollectorHTTPClient` keeps no jar;
  * re-parsing the request URL: ~5 % (httpx copies an absolute `httpx.URL` through its parser on every request);
  * merging the client's headers into a fresh `Headers` per request (the request copies them anyway);
  * reading the body through three async generators (httpx's stream, the transport's, aiohttp's `iter_chunked`):
    `CollectorTransport` reads a body whose length is known and at most `eager_body_bytes` in one `read()`;
  * a reference cycle per response: httpx wraps each response's stream in a `BoundAsyncStream` that points back at
    the response, so every reply (its headers, decoder, stream: ~10 objects) outlives its last use until the cyclic
    garbage collector finds it. At --parallel 256 that was ~830 replies a second for the collector to walk and free,
    in gen-0 collections of ~20 ms each, every response in flight waiting. `CollectorHTTPClient` unbinds the stream
    (a weak reference back, or none when the body is already read), so reference counting frees a reply at once.
"""

from __future__ import annotations

import datetime
import functools
import time
import weakref
from typing import Any

import aiohttp
import httpx
import yarl
from httpx._client import BoundAsyncStream
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AIOHTTP_EXC_MAP, AiohttpResponseStream

from rollouts.client.bodies import ReplyBudget, reply_budget
from rollouts.client.tls import tls_context


class _NoCookies(httpx.Cookies):
    """A jar that stays empty: nothing is extracted from responses, so nothing is merged into requests."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def __bool__(self) -> bool:  # httpx asks on every request whether there are cookies to merge
        return False

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        raise ValueError("the collector's HTTP client keeps no cookies: send them per request (Cookie header)")


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    return httpx.URL(url)


class CollectorHTTPClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` with no cookie jar and no per-request re-parsing of absolute URLs or client headers."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("the collector's HTTP client keeps no cookies: send them per request (Cookie header)")

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        # An httpx.URL is immutable: an absolute one needs no copy. Route URLs built per call (remote
        # environments) are few and repeat, so their parse is cached.
        merged = _parsed(url) if isinstance(url, str) else url
        if merged.is_absolute_url:
            return merged
        return super()._merge_url(merged)

    def _merge_headers(self, headers: Any = None) -> Any:
        # `httpx.Request` copies what it is given into its own Headers, so the client's need no copy here.
        if not headers:
            return self.headers
        return super()._merge_headers(headers)

    async def _send_single_request(self, request: httpx.Request) -> httpx.Response:
        response = await super()._send_single_request(request)
        bound = response.stream
        if isinstance(bound, BoundAsyncStream):
            inner = bound._stream
            # A body already read (CollectorTransport's eager path, elapsed set there) needs nothing on close.
            response.stream = (
                inner if isinstance(inner, httpx.ByteStream) else _ElapsedStream(inner, response, bound._start)
            )
        return response


class _ElapsedStream(httpx.AsyncByteStream):
    """httpx's `BoundAsyncStream` (sets `response.elapsed` on close) through a weak reference: no cycle."""

    __slots__ = ("_stream", "_response", "_start")

    def __init__(self, stream: httpx.AsyncByteStream, response: httpx.Response, start: float) -> None:
        self._stream, self._response, self._start = stream, weakref.ref(response), start

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        response = self._response()
        if response is not None:
            response.elapsed = datetime.timedelta(seconds=time.perf_counter() - self._start)
        await self._stream.aclose()


_NO_COOKIES = _NoCookies()


def _mapped(exc: Exception) -> Exception | None:
    """The httpx exception for an aiohttp one (the most specific match), as httpx-aiohttp maps them."""
    found = None
    for source, target in AIOHTTP_EXC_MAP.items():
        if isinstance(exc, source) and (found is None or issubclass(target, found)):
            found = target
    return found(str(exc)) if found is not None else None


class CollectorTransport(AiohttpTransport):
    """httpx-aiohttp's transport, with the request's URL and timeout converted once and small bodies read at once.

    A body is read eagerly only when its length is declared, at most `eager_body_bytes`, and not content-encoded
    (httpx decodes encoded bodies itself); anything else streams exactly as in `AiohttpTransport`, so a reader that
    caps a body by streaming it still reads at most the cap plus one chunk.
    """

    def __init__(self, *args: Any, eager_body_bytes: int = 1 << 20, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eager_body_bytes = eager_body_bytes
        self._urls: dict[str, Any] = {}  # str(httpx.URL) -> yarl.URL: aiohttp parses a str URL on every request
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        self._budget: ReplyBudget | None = None

    def budget(self) -> ReplyBudget:
        """The reply budget of the loop this transport's session lives on (found once)."""
        if self._budget is None:
            self._budget = reply_budget()
        return self._budget

    def _yarl(self, url: httpx.URL) -> Any:
        text = str(url)
        converted = self._urls.get(text)
        if converted is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            converted = self._urls[text] = yarl.URL(text)
        return converted

    def _timeout(self, timeout: dict[str, Any]) -> aiohttp.ClientTimeout:
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return found

    def target(self, url: httpx.URL, timeout: dict[str, Any]) -> tuple[Any, aiohttp.ClientTimeout]:
        """`url` and httpx `timeout` extensions converted once for `post`."""
        return self._yarl(url), self._timeout(timeout)

    @property
    def direct(self) -> bool:
        """Whether `post` may be used: not through a proxy, which httpx-aiohttp's own path handles."""
        return self.proxy is None

    async def post(
        self,
        target: tuple[Any, aiohttp.ClientTimeout],
        headers: list[tuple[str, str]],
        body: bytes,
        ok_body_limit: int | None = None,
    ) -> httpx.Response | tuple[int, bytes]:
        """A POST of a body in memory, sent and answered as `handle_async_request` does, without an `httpx.Request`.

        For the collector's model calls, whose URL, headers (the client's, merged once by the caller) and timeouts
        never change: building and copying an `httpx.Request` per call (its Headers normalised, the body wrapped in a
        stream, the content length set), only for this transport to take it apart again into aiohttp's arguments,
        was ~8 % of the collector's CPU at `--parallel 512`. aiohttp sets Host and Content-Length itself.

        With `ok_body_limit`, a 2xx reply read at once (see the class) whose length is at most that limit comes back
        as `(status, body)`: no `httpx.Response` built, read back and closed per model call (~6 % of a tool rollout's
        CPU). Any other reply is an `httpx.Response`, as without it."""
        url, timeout = target
        return await self._send("POST", url, headers, body, timeout, None, ok_body_limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None or request.extensions.get("sni_hostname"):
            return await super().handle_async_request(request)
        try:
            data: Any = request.content or None
        except httpx.RequestNotRead:
            data = request.stream
            request.headers.pop("transfer-encoding", None)  # aiohttp frames a streamed body itself
        reply = await self._send(
            request.method,
            self._yarl(request.url),
            request.headers.multi_items(),
            data,
            self._timeout(request.extensions.get("timeout", {})),
            request,
            None,
        )
        assert isinstance(reply, httpx.Response)  # without an ok_body_limit, _send returns nothing else
        return reply

    async def _send(
        self,
        method: str,
        url: Any,
        headers: list[tuple[str, str]],
        data: Any,
        timeout: aiohttp.ClientTimeout,
        request: httpx.Request | None,
        ok_body_limit: int | None,
    ) -> httpx.Response | tuple[int, bytes]:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        started = time.perf_counter()
        try:
            response = await self.client.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=timeout,
            )
            extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
            if response.reason:
                extensions["reason_phrase"] = response.reason.encode()
            length = response.content_length
            if length is not None and length <= self.eager_body_bytes and "Content-Encoding" not in response.headers:
                budget, reader = self.budget(), object()  # held against the process's reply memory while read
                if not budget.take_now(reader, length):
                    await budget.take(reader, length)
                try:
                    body = await response.read()
                finally:
                    budget.give_back(reader)
                response.release()
                if ok_body_limit is not None and response.status < 300 and length <= ok_body_limit:
                    return response.status, body
                # stream=, not content=: httpx would run the bytes through its decoders and chunker at once (~7 % of
                # a model call's CPU); a reader gets them from the ByteStream, or through httpx's read() as ever.
                reply = httpx.Response(
                    response.status,
                    headers=response.raw_headers,
                    stream=httpx.ByteStream(body),
                    request=request,
                    extensions=extensions,
                )
                reply.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
                return reply
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=extensions,
        )


def cookie_free_transport(limits: httpx.Limits | None = None) -> httpx.AsyncBaseTransport:
    """An aiohttp-backed httpx transport whose aiohttp session keeps no cookies (sessions stay per rollout)."""
    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)

    def make_session() -> aiohttp.ClientSession:  # called lazily, inside the running event loop
        connector = aiohttp.TCPConnector(limit=limits.max_connections or 0, keepalive_timeout=limits.keepalive_expiry)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return CollectorTransport(limits=limits, client=make_session, verify=tls_context())

"""The collector's HTTP stack (rollouts/client/transport.py) against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from aiohttp import web

from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import ModelClient, http_client
from rollouts.client.transport import CollectorHTTPClient, CollectorTransport
from rollouts.envs import RemoteEnvironment, cookie_free_transport
from rollouts.errors import ProviderTimeout
from rollouts.sim import SimConfig, serve_in_thread
from tests.servers.resources_server import ResourcesServerHandle, start_resources_server

BIG = b"x" * 300_000


async def echo(request: web.Request) -> web.Response:
    """The request as the server saw it; sets a cookie, so a client with a jar would send it back."""
    body = await request.read()
    reply = web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode(),
        }
    )
    reply.set_cookie("shared", "leak")
    return reply


async def big(request: web.Request) -> web.Response:
    return web.Response(body=BIG, content_type="application/octet-stream")


async def chunked(request: web.Request) -> web.StreamResponse:
    reply = web.StreamResponse()
    reply.enable_chunked_encoding()
    await reply.prepare(request)
    for part in (b"one,", b"two,", b"three"):
        await reply.write(part)
    await reply.write_eof()
    return reply


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(b'{"zipped": true}'), headers={"Content-Encoding": "gzip"}, content_type="application/json"
    )


async def refuse(request: web.Request) -> web.Response:
    return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "2"})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/echo", echo),
                web.get("/echo", echo),
                web.get("/big", big),
                web.get("/chunked", chunked),
                web.get("/gzip", gzipped),
                web.post("/refuse", refuse),
            ]
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield str(box["url"])
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(8, 10.0, EndpointAuth(api_key="sk-test", headers={"X-Team": "rl"})) as http:
        yield http


async def test_the_client_and_transport_are_the_collectors(client: httpx.AsyncClient) -> None:
    assert isinstance(client, CollectorHTTPClient)
    assert isinstance(client._transport, CollectorTransport)
    assert isinstance(cookie_free_transport(), CollectorTransport)


async def test_requests_carry_the_client_headers_and_the_body(server: str, client: httpx.AsyncClient) -> None:
    reply = await client.post(httpx.URL(f"{server}/echo?x=1"), content=b'{"a": 1}')
    seen = reply.json()
    assert reply.status_code == 200 and seen["method"] == "POST" and seen["path"] == "/echo?x=1"
    assert seen["body"] == '{"a": 1}'
    assert seen["headers"]["authorization"] == "Bearer sk-test" and seen["headers"]["x-team"] == "rl"
    assert seen["headers"]["content-type"] == "application/json" and seen["headers"]["content-length"] == "8"
    assert reply.elapsed.total_seconds() > 0


async def test_per_request_headers_override_the_clients(server: str, client: httpx.AsyncClient) -> None:
    seen = (await client.post(f"{server}/echo", content=b"{}", headers={"X-Team": "sft", "X-New": "1"})).json()
    assert seen["headers"]["x-team"] == "sft" and seen["headers"]["x-new"] == "1"
    again = (await client.get(f"{server}/echo")).json()
    assert (
        again["headers"]["x-team"] == "rl" and "x-new" not in again["headers"]
    )  # the client's own stayed as they were


async def test_no_cookie_jar_on_the_client(server: str, client: httpx.AsyncClient) -> None:
    first = await client.get(f"{server}/echo")
    assert "shared=leak" in first.headers["set-cookie"]  # the reply's header is there for who wants it
    second = (await client.get(f"{server}/echo")).json()
    assert "cookie" not in second["headers"]
    assert not client.cookies and list(client.cookies.jar) == []
    with pytest.raises(ValueError, match="keeps no cookies"):
        client.cookies = {"a": "b"}
    explicit = (await client.get(f"{server}/echo", headers={"Cookie": "mine=1"})).json()
    assert explicit["headers"]["cookie"] == "mine=1"


async def test_relative_urls_join_the_base_url(server: str) -> None:
    async with CollectorHTTPClient(base_url=f"{server}/", transport=cookie_free_transport()) as http:
        assert (await http.get("echo")).json()["path"] == "/echo"


async def test_a_body_over_the_eager_size_streams(server: str) -> None:
    transport = CollectorTransport(client=None, eager_body_bytes=1000)
    async with CollectorHTTPClient(transport=transport) as http:
        assert (await http.get(f"{server}/big")).content == BIG
        async with http.stream("GET", f"{server}/big") as reply:
            chunks = [chunk async for chunk in reply.aiter_raw()]
        assert b"".join(chunks) == BIG and len(chunks) > 1  # read piece by piece, not at once


async def test_chunked_and_encoded_bodies(server: str, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{server}/chunked")).content == b"one,two,three"
    assert (await client.get(f"{server}/gzip")).json() == {"zipped": True}  # httpx decodes it, as before


async def test_transport_errors_are_httpx_errors_as_httpx_aiohttp_maps_them(client: httpx.AsyncClient) -> None:
    from httpx_aiohttp import AiohttpTransport

    with pytest.raises(httpx.TransportError) as ours:
        await client.get("http://127.0.0.1:1/echo")
    async with httpx.AsyncClient(transport=AiohttpTransport()) as plain:
        with pytest.raises(httpx.TransportError) as theirs:
            await plain.get("http://127.0.0.1:1/echo")
    assert type(ours.value) is type(theirs.value)


async def test_connections_are_reused_for_eager_bodies(server: str) -> None:
    async with http_client(2, 10.0) as http:
        for _ in range(20):  # more requests than connections: each eagerly read one went back to the pool
            assert (await http.get(f"{server}/echo")).status_code == 200
        connector = http._transport.client.connector
        assert connector.limit == 2 and len(connector._acquired) == 0


async def test_replies_are_freed_by_reference_counting_not_the_cyclic_collector(server: str) -> None:
    """httpx binds each reply's stream back to the reply: a cycle per request unless the client unbinds it."""
    import gc

    transport = CollectorTransport(client=None, eager_body_bytes=1000)
    async with CollectorHTTPClient(transport=transport) as http:
        await http.get(f"{server}/echo")  # the pool's first connection and its objects exist before counting
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                assert (await http.get(f"{server}/echo")).json()["path"] == "/echo"  # eager body
                streamed = await http.get(f"{server}/big")  # streamed body, closed by httpx's read
                assert streamed.content == BIG and streamed.elapsed.total_seconds() > 0
                del streamed
            gc.collect()
            left = [o for o in gc.garbage if isinstance(o, (httpx.Response, httpx.Headers))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert left == []


async def test_a_model_call_sends_what_the_httpx_path_sends_without_an_httpx_request(
    server: str, client: httpx.AsyncClient
) -> None:
    """ModelClient's direct path (CollectorTransport.post): the same method, path, headers and body reach the server
    as through `handle_async_request` with the httpx.Request the client would build, and the reply is the same."""
    model = ModelClient(client, server, "m", "chat", max_retries=0)
    assert model.direct is client._transport
    body = b'{"model": "m", "messages": []}'
    url = httpx.URL(f"{server}/echo")
    direct = await model.direct.post(model.direct.target(url, model.extensions["timeout"]), model._header_items, body)
    request = httpx.Request("POST", url, headers=model.headers, content=body, extensions=model.extensions)
    through = await client._transport.handle_async_request(request)
    seen, want = orjson.loads(await direct.aread()), orjson.loads(await through.aread())
    assert direct.status_code == through.status_code == 200
    assert seen["body"] == want["body"] == body.decode() and seen["path"] == want["path"] == "/echo"
    assert seen["headers"] == want["headers"]
    assert seen["headers"]["authorization"] == "Bearer sk-test" and seen["headers"]["content-length"] == str(len(body))
    assert direct.headers["content-type"] == "application/json; charset=utf-8" and direct.elapsed.total_seconds() > 0
    with pytest.raises(httpx.TransportError):  # errors are httpx's, as on the other path
        await model.direct.post(model.direct.target(httpx.URL("http://127.0.0.1:1/v1"), {}), [], body)


async def test_a_model_calls_2xx_body_within_its_cap_comes_back_as_bytes_anything_else_as_a_response(
    server: str, client: httpx.AsyncClient
) -> None:
    model = ModelClient(client, server, "m", "chat", max_retries=0)
    assert model.direct is not None
    timeout = model.extensions["timeout"]
    echo_at, refuse_at = (model.direct.target(httpx.URL(f"{server}{path}"), timeout) for path in ("/echo", "/refuse"))
    body = b'{"model": "m", "messages": []}'
    reply = await model.direct.post(echo_at, model._header_items, body, 1 << 20)
    as_response = await model.direct.post(echo_at, model._header_items, body)
    assert isinstance(reply, tuple) and isinstance(as_response, httpx.Response)
    assert reply[0] == as_response.status_code == 200 and reply[1] == await as_response.aread()
    over_cap = await model.direct.post(echo_at, model._header_items, body, 16)  # read_capped refuses it, as ever
    refused = await model.direct.post(refuse_at, model._header_items, body, 1 << 20)
    assert isinstance(over_cap, httpx.Response) and isinstance(refused, httpx.Response)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    await over_cap.aclose()
    await refused.aclose()


async def test_a_model_call_arms_no_read_timer_its_own_deadline_makes_redundant() -> None:
    async with http_client(2, 30.0) as http:
        redundant = ModelClient(http, "http://model/v1", "m", "chat", max_retries=0, request_timeout=30.0)
        shorter = ModelClient(http, "http://model/v1", "m", "chat", max_retries=0, request_timeout=60.0)
        unbounded = ModelClient(http, "http://model/v1", "m", "chat", max_retries=0)
    assert redundant._target[1].sock_read is None and redundant._target[1].sock_connect == 30.0
    assert shorter._target[1].sock_read == unbounded._target[1].sock_read == 30.0


async def test_a_stalled_reply_still_ends_at_the_request_deadline() -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Length": "100"})
        await reply.prepare(request)
        await reply.write(b"{")
        await release.wait()
        return reply

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", stall)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with http_client(2, 0.3) as http:
            model = ModelClient(
                http, f"http://127.0.0.1:{runner.addresses[0][1]}/v1", "m", "chat", max_retries=0, request_timeout=0.3
            )
            assert model._target[1].sock_read is None
            with pytest.raises(ProviderTimeout, match="within the 0.3 s request deadline"):
                await model.create([{"role": "user", "content": "hi"}], {}, {})
    finally:
        release.set()
        await runner.cleanup()


async def test_model_calls_read_as_bytes_equal_those_read_through_httpx_responses() -> None:
    url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=3))
    try:
        async with http_client(4, 10.0) as http:
            calls = []
            for direct in (True, False):
                model = ModelClient(http, url, "sim-model", "chat", max_retries=0)
                if not direct:
                    model.direct = None  # through handle_async_request and an httpx.Response, as a proxy would
                items = [{"role": "user", "content": "What is 4 + 1?"}]
                calls.append(await model.create(items, {}, {"temperature": 0.0, "seed": 7}))
    finally:
        stop()
    for call in calls:  # a reply's id is random; everything else follows from the seed
        call.latency_ms, call.response_id = 0.0, ""
        call.output = [{k: v for k, v in item.items() if k != "id"} for item in call.output]
    assert calls[0] == calls[1] and calls[0].output


async def test_a_proxied_transport_is_sent_httpx_aiohttps_way() -> None:
    async with http_client(2, 10.0, transport=CollectorTransport(client=None, proxy="http://127.0.0.1:9")) as http:
        assert ModelClient(http, "http://model/v1", "m", "chat", max_retries=0).direct is None


async def test_model_calls_through_the_collector_client() -> None:
    url, stop = serve_in_thread(SimConfig(latency_ms=0, seed=1))
    try:
        async with http_client(16, 10.0) as http:
            model = ModelClient(http, url, "sim-model", "chat", max_retries=0)
            calls = await asyncio.gather(
                *(
                    model.create(
                        [{"role": "user", "content": f"What is {i} + 1?"}], {}, {"temperature": 0.0, "seed": i}
                    )
                    for i in range(32)
                )
            )
    finally:
        stop()
    assert len(calls) == 32 and all(c.output and c.output[-1]["type"] == "message" for c in calls)
    assert all(c.output_tokens > 0 and c.attempts == 1 for c in calls)


@pytest.fixture(scope="module")
def gym() -> Iterator[ResourcesServerHandle]:
    handle = start_resources_server()
    yield handle
    handle.stop()


async def test_remote_sessions_stay_per_rollout(gym: ResourcesServerHandle) -> None:
    # A host name, not an IP: a cookie jar would keep these cookies and mix the rollouts' sessions.
    env = RemoteEnvironment("calc", gym.url.replace("127.0.0.1", "localhost"), backoff=0.01)
    row = {"responses_create_params": {"input": "6*7?"}, "agent_ref": {"name": "calc"}}
    async with http_client(8, 10.0) as http:
        sessions = await asyncio.gather(*(env.seed_session({**row, "expected_answer": str(k)}, http) for k in range(4)))
        for k, session in enumerate(sessions):
            for _ in range(k):
                await env.call_tool("calculate", '{"expression": "1+1"}', http, session)
        infos = [json.loads(await env.call_tool("session_info", "{}", http, s)) for s in sessions]
    assert len({s.cookies["session_id"] for s in sessions}) == 4
    assert [info["tool_calls"] for info in infos] == [0, 1, 2, 3]
    assert [info["seed"]["expected_answer"] for info in infos] == ["0", "1", "2", "3"]


def test_orjson_bodies_are_sent_unchanged() -> None:
    # The model client encodes once with orjson; the request keeps those bytes for every attempt.
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "é"}]})
    request = CollectorHTTPClient().build_request("POST", "http://127.0.0.1:9/v1/chat/completions", content=body)
    assert request.content == body and request.headers["content-length"] == str(len(body))

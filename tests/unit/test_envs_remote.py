"""The remote environment against a real (fake) NeMo Gym resources server on loopback, plus the registry."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from rollouts.envs import (
    BUILTIN_ENVIRONMENTS,
    MathEnvironment,
    RemoteEnvironment,
    SessionState,
    build_environments,
    complete_response,
    cookie_free_transport,
    known_environment_names,
    parse_remote_env,
    verify_extras,
)
from rollouts.envs.remote import gym_row
from rollouts.errors import ConfigError, VerifierError
from tests.servers.resources_server import ResourcesServerHandle, start_resources_server, validate_verify_body

ROW = {
    "responses_create_params": {
        "input": [{"role": "user", "content": "What is 6 * 7? Use the calculator."}],
        "tools": [{"type": "function", "name": "calculate", "parameters": {"type": "object"}}],
    },
    "agent_ref": {"name": "calc"},
    "expected_answer": "42",
    "difficulty": "easy",
}

# What our model client hands the verifier: no id, created_at, tools, annotations... a real Gym server 422s on it.
BARE_RESPONSE = {
    "model": "Qwen3-8B",
    "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "use the tool"}]},
        {"type": "function_call", "call_id": "call_1", "name": "calculate", "arguments": '{"expression": "6*7"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"result": 42}'},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "6 * 7 = 42."}]},
    ],
    "usage": {"input_tokens": 30, "output_tokens": 12},
}


@pytest.fixture(scope="module")
def server() -> Iterator[ResourcesServerHandle]:
    handle = start_resources_server()
    yield handle
    handle.stop()


@pytest.fixture
def gym(server: ResourcesServerHandle) -> Iterator[ResourcesServerHandle]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture(params=["httpx", "aiohttp"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    transport = cookie_free_transport() if request.param == "aiohttp" else None
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


def env_for(handle: ResourcesServerHandle, **options: float) -> RemoteEnvironment:
    return RemoteEnvironment("calc", handle.url, **{"backoff": 0.01, **options})


async def test_seed_tool_verify_round_trip(gym: ResourcesServerHandle, http: httpx.AsyncClient) -> None:
    env = env_for(gym)
    session = await env.seed_session(ROW, http)
    assert isinstance(session, SessionState) and set(session.cookies) == {"session_id"}
    assert await env.call_tool("calculate", '{"expression": "6 * 7"}', http, session) == '{"result": 42}'
    result = await env.verify(ROW, BARE_RESPONSE, http, session)
    assert result.reward == 1.0
    # extras: the verifier's own fields only; the echoed row, response and reward are not repeated
    # the verifier's `status` does not overwrite the collector's: it is kept under `verifier`
    assert result.extra == {"judge": "substring", "session_tool_calls": 1, "verifier": {"status": "pass"}}
    wrong = {**BARE_RESPONSE, "output": [{"type": "message", "content": [{"type": "output_text", "text": "41"}]}]}
    assert (await env.verify(ROW, wrong, http, session)).reward == 0.0


async def test_incomplete_response_is_completed_before_verify(
    gym: ResourcesServerHandle, http: httpx.AsyncClient
) -> None:
    sent = {**ROW, "response": BARE_RESPONSE}
    problems = {tuple(e["loc"]) for e in validate_verify_body(sent)}
    assert ("body", "response", "id") in problems and ("body", "response", "tools") in problems
    assert any(loc[:4] == ("body", "response", "output", 3) and loc[-1] == "annotations" for loc in problems)
    filled = complete_response(BARE_RESPONSE, ROW)
    assert validate_verify_body({**ROW, "response": filled}) != []  # the row's tool has no `strict`: Gym refuses it
    assert validate_verify_body({**gym_row(ROW), "response": filled}) == []  # what verify() sends
    assert filled["tools"] == [{**ROW["responses_create_params"]["tools"][0], "strict": None}]
    assert filled["object"] == "response" and filled["parallel_tool_calls"] is True and filled["tool_choice"] == "auto"
    assert "id" not in BARE_RESPONSE and "annotations" not in BARE_RESPONSE["output"][3]["content"][0]  # no mutation
    env = env_for(gym)
    result = await env.verify(ROW, BARE_RESPONSE, http, await env.seed_session(ROW, http))
    assert result.reward == 1.0


async def test_sessions_stay_per_rollout_on_a_shared_client(
    gym: ResourcesServerHandle, http: httpx.AsyncClient
) -> None:
    # `localhost`, not an IP: cookie jars (httpx's, aiohttp's) keep cookies for host names and would leak them.
    env = RemoteEnvironment("calc", gym.url.replace("127.0.0.1", "localhost"), backoff=0.01)
    rows = [{**ROW, "expected_answer": str(k)} for k in range(6)]
    sessions = await asyncio.gather(*(env.seed_session(r, http) for r in rows))
    assert len({s.cookies["session_id"] for s in sessions}) == len(rows)
    for k, session in enumerate(sessions):
        for _ in range(k):
            await env.call_tool("calculate", '{"expression": "1+1"}', http, session)
    for k, session in enumerate(sessions):
        info = json.loads(await env.call_tool("session_info", "{}", http, session))
        assert info["tool_calls"] == k
        assert info["seed"]["expected_answer"] == str(k)


async def test_a_cookie_keeping_aiohttp_client_is_reported(
    gym: ResourcesServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    from httpx_aiohttp import AiohttpTransport

    env = env_for(gym)
    async with httpx.AsyncClient(transport=AiohttpTransport()) as leaky:
        await env.seed_session(ROW, leaky)
    assert "cookie_free_transport" in caplog.text
    caplog.clear()
    async with httpx.AsyncClient(transport=cookie_free_transport()) as safe:
        await env_for(gym).seed_session(ROW, safe)
    assert "cookie_free_transport" not in caplog.text


async def test_server_errors_are_retried(gym: ResourcesServerHandle, http: httpx.AsyncClient) -> None:
    env = env_for(gym)
    session = await env.seed_session(ROW, http)
    gym.fail_next("verify", count=2, status=503)
    result = await env.verify(ROW, BARE_RESPONSE, http, session)
    assert result.reward == 1.0
    assert gym.calls["verify"] == 3


async def test_persistent_server_errors_become_a_verifier_error(
    gym: ResourcesServerHandle, http: httpx.AsyncClient
) -> None:
    env = env_for(gym)
    session = await env.seed_session(ROW, http)
    gym.fail_next("verify", count=5, status=500)
    with pytest.raises(VerifierError, match="after 3 attempt") as caught:
        await env.verify(ROW, BARE_RESPONSE, http, session)
    assert caught.value.status_code == 500
    assert gym.calls["verify"] == 3
    assert pickle.loads(pickle.dumps(caught.value)).status_code == 500


async def test_client_errors_fail_at_once_with_the_servers_body(
    gym: ResourcesServerHandle, http: httpx.AsyncClient
) -> None:
    env = env_for(gym)
    with pytest.raises(VerifierError, match="answered 422") as caught:
        await env.verify(ROW, BARE_RESPONSE, http, session=None)  # no seeded session: the server refuses
    assert caught.value.status_code == 422
    assert "session_id" in caught.value.message  # the 422 body says what is missing
    assert gym.calls["verify"] == 1


async def test_seed_session_retries_then_fails(gym: ResourcesServerHandle, http: httpx.AsyncClient) -> None:
    env = env_for(gym)
    gym.fail_next("seed_session", count=1, status=502)
    assert (await env.seed_session(ROW, http)).cookies
    gym.fail_next("seed_session", count=1, status=404)
    with pytest.raises(VerifierError) as caught:
        await env.seed_session(ROW, http)
    assert caught.value.status_code == 404


async def test_timeouts_are_retried_then_reported(gym: ResourcesServerHandle, http: httpx.AsyncClient) -> None:
    env = env_for(gym, timeout=0.2, attempts=2)
    session = await env.seed_session(ROW, http)
    gym.set_delay("verify", 1.0)
    with pytest.raises(VerifierError, match="after 2 attempt") as caught:
        await env.verify(ROW, BARE_RESPONSE, http, session)
    assert caught.value.status_code is None


async def test_unreachable_server_is_a_verifier_error(http: httpx.AsyncClient) -> None:
    env = RemoteEnvironment("down", "http://127.0.0.1:9", backoff=0.01)
    with pytest.raises(VerifierError, match="failed after 3 attempt"):
        await env.seed_session(ROW, http)
    with pytest.raises(VerifierError):
        await env.call_tool("calculate", '{"expression": "1"}', http, SessionState())


async def test_tool_calls_return_text_whatever_happens(gym: ResourcesServerHandle, http: httpx.AsyncClient) -> None:
    env = env_for(gym)
    session = await env.seed_session(ROW, http)
    assert json.loads(await env.call_tool("calculate", '{"expression": "2**10 / 4"}', http, session)) == {
        "result": 256.0
    }
    assert "error" in json.loads(
        await env.call_tool("calculate", '{"expression": "__import__(\'os\')"}', http, session)
    )
    assert "Invalid tool call arguments" in await env.call_tool("calculate", '{"expression": ', http, session)
    assert "Unknown tool" in await env.call_tool("verify", "{}", http, session)  # a model may not call /verify
    assert "Unknown tool" in await env.call_tool("../admin", "{}", http, session)
    assert "detail" in await env.call_tool("calculate", '{"wrong": 1}', http, session)  # a 422 body is tool output
    gym.fail_next("calculate", count=1, status=500)
    assert "injected failure" in await env.call_tool("calculate", '{"expression": "1"}', http, session)
    assert gym.calls["calculate"] == 4  # 5xx is not retried: a tool may have side effects


def test_verify_extras_rule() -> None:
    sent = {**ROW, "response": {"output": []}}
    reply = {**sent, "reward": 1.0, "judge": "x", "difficulty": "hard", "status": "pass", "_ng_task_index": 3}
    # changed metadata is kept; a verifier field named like a reserved key of the rollout row goes under `verifier`
    assert verify_extras(reply, sent) == {
        "judge": "x",
        "difficulty": "hard",
        "verifier": {"status": "pass", "_ng_task_index": 3},
    }


async def test_missing_reward_is_a_verifier_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"score": 1})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(VerifierError, match="no finite numeric `reward`"):
            await RemoteEnvironment("x", "http://gym").verify(ROW, BARE_RESPONSE, client)


async def test_cookies_are_updated_and_deleted_from_replies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = [("set-cookie", "session_id=new; Path=/"), ("set-cookie", "other=gone; Max-Age=0")]
        assert request.headers["cookie"] == "session_id=old; other=x"
        return httpx.Response(200, json={"reward": 0.5}, headers=headers)

    session = SessionState(cookies={"session_id": "old", "other": "x"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await RemoteEnvironment("x", "http://gym").verify(ROW, BARE_RESPONSE, client, session)
    assert result.reward == 0.5
    assert session.cookies == {"session_id": "new"}


# ---- registry ---------------------------------------------------------------------------------------------------


def test_parse_remote_env() -> None:
    assert parse_remote_env("calc=http://localhost:8000/") == ("calc", "http://localhost:8000")
    assert parse_remote_env(" my-env = https://gym.example.com/api ") == ("my-env", "https://gym.example.com/api")
    for bad in [
        "calc",
        "=http://x",
        "calc=localhost:8000",
        "calc=ftp://x",
        "calc=http://",
        "a b=http://x",
        "c=http://h:port",
    ]:
        with pytest.raises(ConfigError, match="environment"):
            parse_remote_env(bad)


def test_build_environments() -> None:
    builtin = {"math", "exact_match", "multiple_choice", "calculator", "kv_store"}
    assert set(BUILTIN_ENVIRONMENTS) == builtin
    envs = build_environments({"calc": "http://127.0.0.1:1", "math": "http://127.0.0.1:2"})
    assert set(envs) == builtin | {"calc"}
    assert isinstance(envs["calc"], RemoteEnvironment) and envs["calc"].remote
    assert isinstance(envs["math"], RemoteEnvironment)  # a remote name overrides the built-in
    assert isinstance(build_environments({})["math"], MathEnvironment)
    assert known_environment_names({"calc": "http://x"}) == builtin | {"calc"}
    with pytest.raises(ConfigError):
        build_environments({"calc": "not a url"})

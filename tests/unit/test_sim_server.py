"""The simulated model server over real loopback HTTP: OpenAI shapes, seeded answers, faults and capacity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rollouts.sim import SimConfig, SimServer, serve_in_thread, start_sim_server
from rollouts.sim import server as sim_server
from rollouts.sim.server import SimApp

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with start_sim_server(latency_ms=0, seed=7) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def chat(client: httpx.Client, content: str, **fields: Any) -> dict[str, Any]:
    body = {"model": "qwen-test", "messages": [{"role": "user", "content": content}], **fields}
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def respond(client: httpx.Client, input_: Any, **fields: Any) -> dict[str, Any]:
    response = client.post("/responses", json={"model": "qwen-test", "input": input_, **fields})
    assert response.status_code == 200, response.text
    return response.json()


async def post_many(url: str, bodies: list[dict[str, Any]], path: str = "/chat/completions") -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=32)
    # no limit on the wait for one of the 32 connections: 400 requests queue for them on a busy machine
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, pool=None), limits=limits) as http:
        return await asyncio.gather(*(http.post(path, json=body) for body in bodies))


def test_models_lists_the_configured_model(client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["object"] == "list"
    model = body["data"][0]
    assert (model["id"], model["object"], model["owned_by"]) == ("sim-model", "model", "rollouts-sim")


def test_health_and_stats(server: SimServer) -> None:
    assert httpx.get(f"{server.base_url}/health").text == "ok"
    stats = server.stats()
    assert {"requests", "by_status", "in_flight", "max_in_flight"} <= stats.keys()


def test_chat_completion_shape(client: httpx.Client) -> None:
    body = chat(client, "What is 12 + 7?", temperature=0)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen-test"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"].endswith("The answer is \\boxed{19}.")
    assert message["reasoning_content"]
    assert "tool_calls" not in message
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert "prompt_token_ids" not in body and "token_ids" not in choice


def test_responses_shape(client: httpx.Client) -> None:
    body = respond(client, "What is 12 + 7?", temperature=0, top_p=0.9, max_output_tokens=500)
    assert body["id"].startswith("resp_")
    assert (body["object"], body["status"], body["model"]) == ("response", "completed", "qwen-test")
    assert body["incomplete_details"] is None
    assert isinstance(body["created_at"], int)
    assert (body["temperature"], body["top_p"], body["max_output_tokens"]) == (0, 0.9, 500)
    assert (body["parallel_tool_calls"], body["tool_choice"], body["tools"]) == (True, "auto", [])
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"][0]["type"] == "summary_text"
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert (message["role"], message["status"]) == ("assistant", "completed")
    part = message["content"][0]
    assert part["type"] == "output_text" and part["annotations"] == []
    assert part["text"].endswith("\\boxed{19}.")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert "prompt_token_ids" not in message


def test_responses_accept_message_items_with_content_parts(client: httpx.Client) -> None:
    items = [
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Echo: Say hi"}]},
        {"role": "user", "content": "again please"},
    ]
    body = respond(client, items, temperature=0)
    assert body["output"][-1]["content"][0]["text"] == "Echo: again please"


@pytest.mark.parametrize(
    ("question", "boxed"),
    [
        ("What is 12 + 7?", "19"),
        ("Compute 3 * (4 + 5).", "27"),
        ("Calculate 144 / 12", "12"),
        ("What is (10 - 4) / 4?", "\\frac{3}{2}"),
        ("What is 1 - 3 / 4?", "\\frac{1}{4}"),
        ("Evaluate -2 * (3 - 8).", "10"),
    ],
)
def test_arithmetic_is_right_at_temperature_zero(client: httpx.Client, question: str, boxed: str) -> None:
    content = chat(client, question, temperature=0, seed=1)["choices"][0]["message"]["content"]
    assert content.endswith(f"The answer is \\boxed{{{boxed}}}.")


async def test_accuracy_falls_with_temperature(server: SimServer) -> None:
    def bodies(temperature: float) -> list[dict[str, Any]]:
        return [
            {"model": "m", "messages": [{"role": "user", "content": f"What is {i} * 3 + 4?"}], "seed": i}
            | {"temperature": temperature}
            for i in range(200)
        ]

    def accuracy(responses: list[httpx.Response]) -> float:
        right = 0
        for i, response in enumerate(responses):
            right += response.json()["choices"][0]["message"]["content"].endswith(f"\\boxed{{{i * 3 + 4}}}.")
        return right / len(responses)

    cold = accuracy(await post_many(server.url, bodies(0.0)))
    hot = accuracy(await post_many(server.url, bodies(1.5)))
    assert cold == 1.0
    assert 0.15 < hot < 0.55  # p(1.5) = 0.325


def test_same_seed_same_answer_and_other_seeds_vary(client: httpx.Client) -> None:
    def content(seed: int) -> str:
        return chat(client, "What is 17 * 23?", temperature=1.5, seed=seed)["choices"][0]["message"]["content"]

    assert content(5) == content(5)
    assert len({content(seed) for seed in range(20)}) > 1


def test_server_seed_changes_answers(server: SimServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 17 * 23?"}], "temperature": 1.5}
    answers = []
    other, stop = serve_in_thread(SimConfig(latency_ms=0, seed=8))
    try:
        for url in (server.url, other):
            with httpx.Client(base_url=url) as http:
                runs = [http.post("/chat/completions", json=body | {"seed": s}).json() for s in range(12)]
            answers.append([run["choices"][0]["message"]["content"] for run in runs])
    finally:
        stop()
    assert answers[0] != answers[1]


def test_chat_token_ids_and_logprobs_only_when_asked(client: httpx.Client) -> None:
    body = chat(client, "What is 2 + 2?", temperature=0, logprobs=True, return_token_ids=True)
    choice, usage = body["choices"][0], body["usage"]
    assert len(body["prompt_token_ids"]) == usage["prompt_tokens"]
    assert len(choice["token_ids"]) == usage["completion_tokens"]
    entries = choice["logprobs"]["content"]
    assert len(entries) == usage["completion_tokens"]
    assert all(e["logprob"] <= 0 and e["top_logprobs"] == [] and isinstance(e["token"], str) for e in entries)
    plain = chat(client, "What is 2 + 2?", temperature=0, logprobs=True)
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


def test_responses_token_fields_sit_on_the_last_output_item(client: httpx.Client) -> None:
    body = respond(client, "What is 2 + 2?", return_token_ids=True)
    *earlier, last = body["output"]
    assert len(last["prompt_token_ids"]) == body["usage"]["input_tokens"]
    assert len(last["generation_token_ids"]) == len(last["generation_log_probs"]) == body["usage"]["output_tokens"]
    assert all("generation_token_ids" not in item for item in earlier)


def test_max_tokens_truncates_with_finish_reason_length(client: httpx.Client) -> None:
    body = chat(client, "What is 2 + 2?", max_tokens=5, return_token_ids=True)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == len(body["choices"][0]["token_ids"]) == 5
    newer = chat(client, "What is 2 + 2?", max_completion_tokens=30)
    assert newer["choices"][0]["finish_reason"] == "length" and newer["usage"]["completion_tokens"] == 30


def test_max_output_tokens_makes_the_response_incomplete(client: httpx.Client) -> None:
    body = respond(client, "What is 2 + 2?", max_output_tokens=20)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 20
    assert body["output"][-1]["status"] == "incomplete"


def test_chat_tool_call_turn_then_answer_turn_with_contiguous_tokens(client: httpx.Client) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is 6 * 7?"}]
    request = {"model": "m", "tools": [CALCULATOR], "temperature": 0, "return_token_ids": True}
    first = client.post("/chat/completions", json=request | {"messages": messages}).json()
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "6 * 7"}
    messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "42"}]
    second = client.post("/chat/completions", json=request | {"messages": messages}).json()
    assert second["choices"][0]["finish_reason"] == "stop"
    assert second["choices"][0]["message"]["content"].endswith("\\boxed{42}.")
    history = first["prompt_token_ids"] + choice["token_ids"]
    assert second["prompt_token_ids"][: len(history)] == history


def test_responses_tool_call_turn_then_answer_turn_with_contiguous_tokens(client: httpx.Client) -> None:
    tool = {"type": "function", "name": "search", "parameters": {"type": "object", "properties": {"q": {}}}}
    items: list[dict[str, Any]] = [{"role": "user", "content": "Who wrote Dune?"}]
    request = {"model": "m", "tools": [tool], "temperature": 0, "return_token_ids": True}
    first = client.post("/responses", json=request | {"input": items}).json()
    call = first["output"][-1]
    assert call["type"] == "function_call" and call["status"] == "completed"
    assert call["call_id"].startswith("call_") and call["name"] == "search"
    assert json.loads(call["arguments"]) == {"q": "Who wrote Dune?"}
    items += [*first["output"], {"type": "function_call_output", "call_id": call["call_id"], "output": "Frank Herbert"}]
    second = client.post("/responses", json=request | {"input": items}).json()
    assert second["output"][-1]["type"] == "message"
    history = call["prompt_token_ids"] + call["generation_token_ids"]
    assert second["output"][-1]["prompt_token_ids"][: len(history)] == history


def test_tool_choice_none_answers_directly(client: httpx.Client) -> None:
    body = chat(client, "What is 6 * 7?", tools=[CALCULATOR], tool_choice="none", temperature=0)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"].endswith("\\boxed{42}.")


def test_multiple_choice_answers_with_a_letter(client: httpx.Client) -> None:
    prompt = "Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth\nAnswer with the letter."
    letters = {chat(client, prompt, seed=seed)["choices"][0]["message"]["content"] for seed in range(12)}
    assert letters <= {"Answer: A", "Answer: B", "Answer: C", "Answer: D"} and len(letters) > 1


def test_echo_for_plain_text(client: httpx.Client) -> None:
    assert chat(client, "hello, world")["choices"][0]["message"]["content"] == "Echo: hello, world"


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}'),
        ("/chat/completions", b'{"model": "m"}'),
        ("/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'),
        ("/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}'),
        ("/chat/completions", b"{not json"),
        ("/responses", b'{"model": "m"}'),
        ("/responses", b'{"input": "hi"}'),
        ("/responses", b'{"model": "m", "input": "hi", "max_output_tokens": 0}'),
    ],
)
def test_bad_requests_get_openai_errors(client: httpx.Client, path: str, content: bytes) -> None:
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] is None and error["message"]


async def test_fault_rates_are_honoured_and_retries_draw_afresh() -> None:
    with start_sim_server(latency_ms=0, fail_rate=0.2, rate_limit_rate=0.2, retry_after_s=2) as faulty:
        bodies = [{"model": "m", "messages": [{"role": "user", "content": f"item {i}"}]} for i in range(400)]
        responses = await post_many(faulty.url, bodies)
        counts = {code: sum(r.status_code == code for r in responses) for code in (200, 429, 500)}
        assert sum(counts.values()) == 400
        assert 40 < counts[429] < 120 and 40 < counts[500] < 120
        assert all(r.headers["Retry-After"] == "2" for r in responses if r.status_code == 429)
        assert all(r.json()["error"]["type"] for r in responses if r.status_code != 200)
        stats = faulty.stats()
        assert stats["by_status"] == {str(code): n for code, n in counts.items()}
        failed = next(body for body, r in zip(bodies, responses, strict=True) if r.status_code != 200)
        with httpx.Client(base_url=faulty.url) as http:
            retries = [http.post("/chat/completions", json=failed).status_code for _ in range(30)]
        assert 200 in retries


def test_fault_draws_are_deterministic_for_a_seed() -> None:
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"item {i}"}]} for i in range(30)]
    url_a, stop_a = serve_in_thread(SimConfig(latency_ms=0, fail_rate=0.5, seed=3))
    url_b, stop_b = serve_in_thread(SimConfig(latency_ms=0, fail_rate=0.5, seed=3))
    try:
        runs = []
        for url in (url_a, url_b):
            with httpx.Client(base_url=url) as http:
                runs.append([http.post("/chat/completions", json=body).status_code for body in bodies])
    finally:
        stop_a()
        stop_b()
    assert runs[0] == runs[1] and 200 in runs[0] and 500 in runs[0]


def test_slow_requests_exceed_client_timeouts() -> None:
    with start_sim_server(latency_ms=0, slow_rate=1.0, slow_ms=2000) as slow:
        with pytest.raises(httpx.ReadTimeout):
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            httpx.post(f"{slow.url}/chat/completions", json=body, timeout=0.2)
        assert slow.stats()["faults"] == {"slow": 1}


class RecordedSleeps(list):
    """The server module's `asyncio`, with every `asyncio.sleep` it takes noted (in this list) before it sleeps."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.append(delay)
        return await asyncio.sleep(delay, result)


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordedSleeps:
    """How long the simulated server sleeps on each answer (its whole latency), for servers run in this process:
    the latency is checked as the server decides it, not timed on a busy machine."""
    recorded = RecordedSleeps()
    monkeypatch.setattr(sim_server, "asyncio", recorded)
    return recorded


@pytest.mark.parametrize(
    ("options", "loaded"),
    [
        ({"capacity": 4}, 0.4),  # 16 in flight on capacity 4: 4x the latency
        ({"capacity": 4, "capacity_exponent": 1.5}, 0.8),  # a GPU past its knee: (16 / 4) ** 1.5 = 8x
        ({"latency_per_request_ms": 10.0}, 0.26),  # linear in load: 100 ms + 16 x 10 ms
    ],
)
async def test_capacity_makes_latency_grow_with_load(
    monkeypatch: pytest.MonkeyPatch, sleeps: RecordedSleeps, options: dict[str, Any], loaded: float
) -> None:
    # Each request waits at the door until `expected` are in flight, so the count the latency is drawn from does not
    # depend on how fast the client gets its requests out.
    gate: dict[str, Any] = {}
    answer = SimApp._answer

    async def all_in_then_answer(self: SimApp, *args: Any) -> Any:
        if self.in_flight >= gate["expected"]:
            gate["all_in"].set()
        await asyncio.wait_for(gate["all_in"].wait(), 30)
        return await answer(self, *args)

    monkeypatch.setattr(SimApp, "_answer", all_in_then_answer)
    url, stop = serve_in_thread(SimConfig(latency_ms=100, **options))
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        gate.update(expected=1, all_in=asyncio.Event())
        alone = await post_many(url, [body])
        assert [r.status_code for r in alone] == [200] and sleeps == [
            pytest.approx(0.1 + options.get("latency_per_request_ms", 0) / 1000)
        ]
        sleeps.clear()
        gate.update(expected=16, all_in=asyncio.Event())
        responses = await post_many(url, [body] * 16)
        assert all(r.status_code == 200 for r in responses)
        assert sleeps == [pytest.approx(loaded)] * 16
        assert httpx.get(f"{url.removesuffix('/v1')}/stats").json()["max_in_flight"] == 16
    finally:
        stop()


def test_start_failure_raises_with_stderr() -> None:
    with pytest.raises(RuntimeError, match="rollouts-sim failed to start"):
        start_sim_server(host="203.0.113.1", port=1)  # not a local address: bind fails


def test_config_argv_round_trips_through_the_cli_parser() -> None:
    from rollouts.sim.server import build_parser

    config = SimConfig(latency_ms=200, fail_rate=0.1, tokens_per_s=500, reasoning=False, model="x")
    parsed = build_parser().parse_args(config.to_argv())
    assert SimConfig(**vars(parsed)) == config


def test_tokens_per_s_adds_decode_time(sleeps: RecordedSleeps) -> None:
    url, stop = serve_in_thread(SimConfig(latency_ms=0, tokens_per_s=100))
    try:
        body = httpx.post(
            f"{url}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
    finally:
        stop()
    tokens = body.json()["usage"]["completion_tokens"]
    assert tokens > 0 and sleeps == [pytest.approx(tokens / 100)]  # no base latency: decode time only

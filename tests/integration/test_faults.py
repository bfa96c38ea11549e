"""The model client over real loopback HTTP, behind a fault-injecting proxy in front of the simulated server: resets
mid-body, truncated, malformed and HTML bodies, empty choices, hangs, trickling and oversized bodies."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from rollouts.client.model import ModelClient, http_client
from rollouts.errors import ProviderError, ProviderTimeout, ResponseParseError, ResponseTooLarge
from rollouts.sim.launch import SimServer
from tests.integration.conftest import free_port
from tests.servers.fault_proxy import FaultProxyHandle, start_fault_proxy

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
DEADLINE_S = 0.5
# Faults a retry can outlive, and what each one is when it persists.
TRANSIENT = {
    "reset": (ProviderError, None),
    "truncated": (ResponseParseError, 200),
    "malformed": (ResponseParseError, 200),
    "html": (ResponseParseError, 200),
    "empty_choices": (ResponseParseError, 200),
    "null_choices": (ResponseParseError, 200),
    "hang": (ProviderTimeout, None),
    "trickle": (ProviderTimeout, None),
}
PYTHON_TYPES = ("AttributeError", "TypeError", "KeyError", "IndexError", "ValueError", "ConnectTimeout")


@pytest.fixture(scope="module")
def proxy(sim: SimServer) -> Iterator[FaultProxyHandle]:
    with start_fault_proxy(upstream=sim.base_url) as handle:
        yield handle


@pytest.fixture()
async def client(proxy: FaultProxyHandle):
    proxy.reset()
    http = http_client(8, 30.0)
    model = ModelClient(
        http,
        f"{proxy.url}/v1",
        "sim-model",
        "chat",
        max_retries=2,
        rng=random.Random(0),
        request_timeout=DEADLINE_S,
        max_response_bytes=1_000_000,
    )
    model.retry = type(model.retry)(max_retries=2, base_s=0.01, cap_s=0.02)  # fast backoff: the faults are the test
    yield model
    await http.aclose()


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
async def test_a_fault_once_is_retried_and_the_call_succeeds(fault, proxy, client):
    proxy.inject(fault)
    call = await client.create(MESSAGES, {}, {"temperature": 0.0, "seed": 1})
    assert call.attempts == 2 and proxy.calls[fault] == 1 and proxy.calls["ok"] == 1
    assert "4" in call.output[-1]["content"][0]["text"]


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
async def test_a_persistent_fault_fails_typed_with_its_true_status_and_attempts(fault, proxy, client):
    proxy.inject(fault, count=3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await client.create(MESSAGES, {}, {})
    kind, status = TRANSIENT[fault]
    error = info.value
    record = error.as_record("generate")
    assert type(error) is kind and record["type"] == kind.__name__
    assert (record["status_code"], record["attempts"], record["retryable"]) == (status, 3, True)
    assert not any(name in record["message"] for name in PYTHON_TYPES), record["message"]
    if fault in ("hang", "trickle"):  # the deadline covers the whole request, connect to last byte
        assert "request deadline" in error.message
        assert time.monotonic() - started < 3 * DEADLINE_S + 2.0


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversized_body_is_a_typed_failure_not_retried(chunked, proxy, client):
    proxy.inject("oversized", count=3, size=2_000_000, chunked=chunked)
    with pytest.raises(ResponseTooLarge) as info:
        await client.create(MESSAGES, {}, {})
    record = info.value.as_record("generate")
    assert (record["type"], record["status_code"], record["attempts"], record["retryable"]) == (
        "ResponseTooLarge",
        200,
        1,
        False,
    )
    assert "--max-response-bytes 1,000,000" in record["message"]


async def test_a_refused_connection_is_named_so_and_not_a_connect_timeout():
    http = http_client(2, 5.0)
    client = ModelClient(http, f"http://127.0.0.1:{free_port()}/v1", "m", "chat", max_retries=0)
    try:
        with pytest.raises(ProviderError) as info:
            await client.create(MESSAGES, {}, {})
    finally:
        await http.aclose()
    assert type(info.value) is ProviderError and "connection refused" in info.value.message
    assert "Timeout" not in info.value.message and info.value.as_record()["type"] == "ProviderError"

"""The --batch pre-flight (`check_batch_api`): a server whose Files and Batch APIs answer passes; one that lacks them,
refuses the key or answers without a list is one line naming what to fix; a rate limit or 5xx is left to the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rollouts.batch.api import check_batch_api
from rollouts.errors import ConfigError

ANSWERS: dict[str, tuple[int, bytes]] = {}  # route -> (status, body) for the fault server below


class Faulty(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        route = self.path.split("?")[0].rsplit("/", 1)[-1]
        status, body = ANSWERS.get(route, (200, b'{"object": "list", "data": []}'))
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def faulty() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_simulated_provider_passes(sim) -> None:
    check_batch_api(sim.url, {})


@pytest.mark.parametrize(
    ("route", "status", "body", "says"),
    [
        (
            "batches",
            501,
            b'{"error": {"message": "Batch API is not enabled"}}',
            "has no Batch API (GET {url}/batches answered 501)",
        ),
        ("files", 405, b"", "has no Batch API (GET {url}/files answered 405)"),
        ("files", 401, b"", "refused GET {url}/files (HTTP 401): the key in --api-key-env"),
        ("batches", 200, b"<html>sign in</html>", "GET {url}/batches answered 200 without a list of batches"),
    ],
)
def test_what_is_refused_says_what_to_fix(faulty: str, route: str, status: int, body: bytes, says: str) -> None:
    ANSWERS.clear()
    ANSWERS[route] = (status, body)
    with pytest.raises(ConfigError) as refused:
        check_batch_api(faulty, {"Authorization": "Bearer sk-secret-0123"})
    message = str(refused.value)
    assert message.startswith("--batch: ") and says.format(url=faulty) in message and "\n" not in message
    assert "sk-secret" not in message


def test_a_rate_limit_or_server_error_is_left_to_the_run(faulty: str) -> None:
    ANSWERS.clear()
    ANSWERS["files"] = (429, json.dumps({"error": {"message": "slow down"}}).encode())
    ANSWERS["batches"] = (503, b"")
    check_batch_api(faulty, {})

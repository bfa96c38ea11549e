"""`--return-tokens` against a server that gives no token ids fails before the run, in one line naming
`--token-source`: one probe request, not a run of failed rollouts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import math_rows, write_jsonl


class HostedLike(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that, like a hosted API, ignores the token fields: text and usage only."""

    chats: list[dict[str, object]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "sim-model", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).chats.append(body)
        message = {"role": "assistant", "content": "Hello"}
        self._send(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )


@pytest.fixture
def hosted_like() -> Iterator[str]:
    HostedLike.chats = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostedLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _collect(src: Path, url: str, out: Path, *extra: str):
    return rollouts(
        "collect", str(src), "--model-url", url, "--model", "sim-model", "--out", str(out), "--no-progress", *extra
    )


def test_a_server_without_token_ids_fails_fast_in_one_line(tmp_path: Path, hosted_like: str) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(4))
    result = _collect(src, hosted_like, tmp_path / "runs", "--return-tokens", "--num-repeats", "8")
    assert (result.code, result.fast) == (2, True), result.err
    assert result.error_lines == [
        f"error: --return-tokens: no exact source of token ids at {hosted_like} (its reply to a probe request has "
        "no prompt_token_ids, generation_token_ids, generation_log_probs); vLLM, SGLang and llama.cpp's "
        "llama-server return them, hosted APIs do not. --token-source vllm|sglang|llamacpp|tokenize names the "
        "source (now auto)"
    ]
    assert len(HostedLike.chats) == 1 and HostedLike.chats[0]["max_tokens"] == 8  # one tiny probe, nothing else
    assert not (tmp_path / "runs").exists()


def test_a_source_the_server_does_not_speak_fails_fast(tmp_path: Path, sim) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    result = _collect(src, sim.url, tmp_path / "runs", "--return-tokens", "--token-source", "llamacpp")
    assert (result.code, result.fast) == (2, True), result.err
    [line] = result.error_lines
    assert line.startswith(f"error: --return-tokens: no exact source of token ids at {sim.url} (")
    assert line.endswith("--token-source vllm|sglang|llamacpp|tokenize names the source (now llamacpp)")

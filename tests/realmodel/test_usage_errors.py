"""Usage errors against a real server, through the real command: a model it does not serve is refused from its
`/models` before a single request, and an address where nothing listens is one line."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.cli.conftest import rollouts
from tests.integration.conftest import free_port, math_rows, write_jsonl


def test_a_model_the_real_server_does_not_serve_is_refused_up_front(tmp_path: Path, llama_server: str) -> None:
    served = [m["id"] for m in httpx.get(f"{llama_server}/models", timeout=30).json()["data"]]
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(4))
    result = rollouts(
        "collect", str(src), "--model-url", llama_server, "--model", "gpt-4", "--out", str(tmp_path), "--no-progress"
    )
    assert result.code == 2
    assert result.error_lines == [
        f"error: --model 'gpt-4' is not served by {llama_server} (it serves {', '.join(served)}); "
        "pass --no-model-check for a gateway whose model list is incomplete"
    ]
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_a_wrong_port_is_one_line(tmp_path: Path, llama_server: str) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(4))
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = rollouts(  # no progress lines: on a busy machine the checks' phase may be shown before the error
        "collect", str(src), "--model-url", url, "--model", "smollm2", "--out", str(tmp_path), "--no-progress"
    )
    assert result.code == 2
    assert result.error_lines == [
        f"error: cannot reach the model server at {url} (ConnectError): is it running, and "
        "is --model-url right (it usually ends in /v1)?"
    ]

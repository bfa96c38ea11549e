"""Integration fixtures: one Prefect test server per session, the simulated model server, a local S3 (moto)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollouts.collector.runtime import collector
from rollouts.sim.launch import SimServer, start_sim_server


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        # 60 s fits a quiet machine; a shared, loaded one may need more (ROLLOUTS_TEST_PREFECT_STARTUP_S).
        prefect_test_harness(server_startup_timeout=int(os.environ.get("ROLLOUTS_TEST_PREFECT_STARTUP_S", "60"))),
        temporary_settings(updates={"flows.heartbeat_frequency": None}),
    ):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    """A healthy simulated model server (fast)."""
    with start_sim_server(latency_ms=5, seed=0) as server:
        yield server


@pytest.fixture()
def board() -> None:
    collector().board.reset()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback; s3fs, polars and boto3 find it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def math_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 3 + i, 7 + 2 * i
        rows.append(
            {
                "responses_create_params": {"input": [{"role": "user", "content": f"What is {a} + {b}?"}]},
                "expected_answer": str(a + b),
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_rows(run_dir: Path, folder: str) -> list[dict]:
    rows = []
    for file in sorted((run_dir / folder).glob("*.jsonl")):
        rows += read_jsonl(file)
    return rows


@pytest.fixture(scope="session")
def live_prefect():
    """A real `prefect server start` (not the test harness): schedules, automations and workers behave as deployed.
    The test process's own client points at it only inside `live_client`."""
    from tests.integration.live_server import prefect_server

    with prefect_server() as server:
        yield server


@pytest.fixture()
def live_client(live_prefect):
    """This process's Prefect settings pointed at the live server for one test."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": live_prefect.api_url, "flows.heartbeat_frequency": None}):
        yield live_prefect

"""Session-wide settings: offline Prefect, and fixtures for the real servers the tests talk to over loopback.

The servers are session fixtures defined here, once, so that every tier shares them: one Prefect server
(`live_prefect`, also this process's API through `prefect_server`), one simulated model server (`sim`), one local
S3 (`s3_endpoint`). A fixture imported into a second conftest would be a second definition, and start a second
server."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rollouts.sim.launch import SimServer

# Before anything imports Prefect: no telemetry, a patient embedded-server start under CI load.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# A command run without PREFECT_API_URL starts the long-lived local Prefect server: keep it out of the user's home,
# and stop it when the session ends (pytest_sessionfinish). Made once, by the controlling process: pytest-xdist's
# workers inherit it, so the whole session shares one local server, as the runs of one machine do (the first run
# to need it starts it; the others wait for that one).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if not (_XDIST_WORKER and os.environ.get("ROLLOUTS_TEST_HOME")):
    os.environ["ROLLOUTS_TEST_HOME"] = tempfile.mkdtemp(prefix="rollouts-home-")
os.environ["ROLLOUTS_HOME"] = os.environ["ROLLOUTS_TEST_HOME"]
# Hugging Face `datasets` caches every file it loads (tests/trainers/ load training files): not in the user's home.
os.environ["HF_DATASETS_CACHE"] = os.path.join(os.environ["ROLLOUTS_HOME"], "hf-datasets")
os.environ.setdefault("ROLLOUTS_SERVER_PORT", "4300")  # not 4200, which a developer's own local server may hold


def _write_project_bytecode() -> None:
    """Compile the project's modules once, before any test starts a command. Where PYTHONDONTWRITEBYTECODE is set (as
    on many CI images) nothing else writes them, and every command, collector process and worker a test starts would
    compile the project's sources again: about 0.5 s of CPU per process. Up-to-date files are skipped."""
    import compileall
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for package in ("rollouts", "commands", "flows", "tasks", "blocks", "deployments", "tests"):
        compileall.compile_dir(root / package, quiet=1)


_write_project_bytecode()


def pytest_sessionfinish(session, exitstatus):
    """The controlling process stops the session's local server once every worker is done."""
    if _XDIST_WORKER:
        return
    from commands.server import stop

    stop()


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/, tests/cli/ and tests/realmodel/ is marked `integration`:
    `pytest -m "not integration"` is the fast suite. Everything under tests/realmodel/ is also marked `realmodel`
    (`pytest -m realmodel` runs only the real-model tier)."""
    import pytest

    for item in items:
        parts = set(item.path.parts)
        if {"integration", "cli", "realmodel"} & parts:
            item.add_marker(pytest.mark.integration)
        if "realmodel" in parts:
            item.add_marker(pytest.mark.realmodel)


@pytest.fixture(scope="session")
def prefect_server(live_prefect) -> Iterator[str]:
    """The session's one Prefect server (`live_prefect`), as this process's API from the first test that asks for it
    to the end of the session; its API URL. Like Prefect's `prefect_test_harness`, the settings are also the
    process-global ones, so threads that copied no context use them too."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import temporary_settings

    with (
        temporary_settings(updates={"api.url": live_prefect.api_url, "flows.heartbeat_frequency": None}),
        _temporary_global_settings_context(get_settings_context()),  # evaluated once the line above is in force
    ):
        try:
            yield live_prefect.api_url
        finally:
            _drain_prefect_workers()


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before the server stops (as the test harness does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    """A healthy simulated model server (fast)."""
    from rollouts.sim.launch import start_sim_server

    with start_sim_server(latency_ms=5, seed=0) as server:
        yield server


@pytest.fixture()
def board() -> None:
    from rollouts.collector.runtime import collector

    collector().board.reset()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback; s3fs, polars and boto3 find it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    from tests.integration.conftest import free_port

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


@pytest.fixture(scope="session")
def live_prefect():
    """The session's one Prefect server: a real `prefect server start` (schedules, automations and workers behave as
    deployed), seeded from the schema snapshot as the local server is. Subprocesses reach it through `.env()`; this
    process through `prefect_server` (for the rest of the session) or `live_client` (for one test)."""
    from tests.integration.live_server import prefect_server

    with prefect_server() as server:
        yield server


@pytest.fixture()
def live_client(live_prefect):
    """This process's Prefect settings pointed at the live server for one test."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": live_prefect.api_url, "flows.heartbeat_frequency": None}):
        yield live_prefect

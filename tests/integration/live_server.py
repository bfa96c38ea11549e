"""A real `prefect server start` on a free loopback port and a process worker polling a pool, as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env(home: str, api_url: str | None = None) -> dict[str, str]:
    """The environment of every Prefect subprocess: its own PREFECT_HOME, no telemetry, the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="60",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@dataclass
class LiveServer:
    url: str  # the UI, e.g. http://127.0.0.1:4321
    home: str
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        return {**offline_env(self.home, self.api_url), **extra}


def _stop(process: subprocess.Popen, timeout_s: float = 15) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def prefect_server(startup_timeout_s: float = 240, **settings: str) -> Iterator[LiveServer]:
    """`prefect server start` in its own session (so its uvicorn child goes with it), healthy before it yields;
    `settings` are extra environment variables of the server (PREFECT_SERVER_SERVICES_...).

    Its database is seeded from the installed Prefect's schema snapshot, as `rollouts server start` seeds the local
    server's (commands/prefect_db.py, checked against the real migrations by tests/integration/test_prefect_db.py):
    the ~8 s of CPU that running every migration takes is not spent again here."""
    from commands import prefect_db

    home = tempfile.mkdtemp(prefix="prefect-home-")
    port = _free_port()
    log = Path(home) / "server.log"
    with open(log, "wb") as out:
        # The UI asks /ui-settings for the API's address, which otherwise defaults to port 4200.
        # Events are written every second instead of every 5: tests that wait for an event wait less.
        env = {
            **offline_env(home),
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
            **settings,
        }
        if prefect_db.seed(Path(home), env=env):
            env.update(prefect_db.first_start())  # at the head revision, the block registration in it too
        process = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", home=home, log=log)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server not healthy after {startup_timeout_s} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield server
    finally:
        _stop(process)


def run_prefect(server: LiveServer, *args: str, timeout_s: float = 120) -> str:
    """A `prefect ...` command against the server; its output, or an error with it."""
    done = subprocess.run(
        [*PREFECT, *args], env=server.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def process_worker(server: LiveServer, pool: str) -> Iterator[Path]:
    """A process work pool and `prefect worker start` polling it every second; yields the worker's log file."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()  # what `prefect work-pool create --type process` sends
    with SyncPrefectClient(server.api_url) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template), overwrite=True)
    log = Path(server.home) / f"worker-{pool}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
            env=server.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        _stop(process)

"""Start the simulated server for tests and demos: as a subprocess (`start_sim_server`) or in a thread."""

from __future__ import annotations

import asyncio
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from rollouts.sim.server import SimConfig, start

_LISTENING_RE = re.compile(r"rollouts-sim listening on (http://\S+/v1)")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SimServer:
    """A running `python -m rollouts.sim` subprocess; a context manager, or call `.stop()` yourself."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, stderr: IO[bytes]) -> None:
        self.process = process
        self.url = url
        self.port: int = urlsplit(url).port or 0
        self._stderr = stderr

    @property
    def base_url(self) -> str:
        """The server root (no /v1), where /health and /stats live."""
        return self.url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        import httpx  # here: the server's own process (`python -m rollouts.sim` loads this package) never needs it

        response = httpx.get(f"{self.base_url}/stats", timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()  # the simulated server's /stats is a JSON object
        return stats

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL); safe to call twice."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _read_line(stream: IO[bytes], deadline: float) -> str:
    """The first line the process prints, or what came before EOF or the deadline."""
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
    return buffer.decode(errors="replace")


def start_sim_server(*, startup_timeout_s: float = 30.0, **options: Any) -> SimServer:
    """Spawn the simulated server with SimConfig options (`latency_ms=200`, `fail_rate=0.1`, ...) and wait for it."""
    config = SimConfig(**options)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the server's stderr, owned and closed by SimServer.stop)
    command = [sys.executable, "-m", "rollouts.sim", *config.to_argv()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
    assert process.stdout is not None
    line = _read_line(process.stdout, time.monotonic() + startup_timeout_s)
    match = _LISTENING_RE.search(line)
    if match is None:
        code = process.poll()
        state = f"exit code {code}" if code is not None else f"no listening line in {startup_timeout_s} s"
        with tempfile.TemporaryFile() as unused_stderr:
            SimServer(process, "http://invalid/v1", unused_stderr).stop()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace").strip()
        stderr.close()
        raise RuntimeError(f"rollouts-sim failed to start ({state}); stdout: {line.strip()!r}; stderr:\n{errors}")
    return SimServer(process, match.group(1), stderr)


def serve_in_thread(config: SimConfig | None = None) -> tuple[str, Callable[[], None]]:
    """Serve on an event loop in a daemon thread of this process; returns the /v1 URL and a stop function."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    started: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner, started["url"] = loop.run_until_complete(start(config or SimConfig()))
        except BaseException as exc:  # handed to the caller's thread below
            started["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="rollouts-sim", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("rollouts-sim did not start in a thread within 30 s")
    if "error" in started:
        raise RuntimeError(f"rollouts-sim failed to start: {started['error']}") from started["error"]

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    return started["url"], stop

"""`rollouts server start|stop|status`: one long-lived local Prefect server (with its UI) shared by every run.

Without `PREFECT_API_URL`, each `rollouts collect` would start Prefect's embedded server of its own: 6-13 s of every
run spent starting a database and an API, no UI to look at the run in, and Dask workers that cannot reach it. The
local server is started in the background on first use, stays up, and is found again by the next run through its
state file (`$ROLLOUTS_HOME/server/server.json`, default `~/.rollouts`). A user's own `PREFECT_API_URL` always wins;
`ROLLOUTS_SERVER=ephemeral` keeps Prefect's embedded server instead. `ROLLOUTS_SERVER_PORT` sets the port a new
local server prefers (default 4200; a free one when it is taken). Two runs started at once on a machine with no
server (two terminals, a script starting several) find one server: the decision to start one is taken under a file
lock, and the state file names a server from the moment it is launched, so the second run waits for the first's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from commands import command_help, prefect_db
from commands.errors import EXIT_OK, EXIT_USAGE, error
from rollouts.errors import ConfigError

DEFAULT_PORT = 4200


def preferred_port() -> int:
    """The port a new local server asks for first: `ROLLOUTS_SERVER_PORT`, else 4200."""
    value = os.environ.get("ROLLOUTS_SERVER_PORT", "")
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"ROLLOUTS_SERVER_PORT={value!r} is not a port number (1-65535)")
    return int(value)


START_TIMEOUT_S = 90.0


@dataclass
class ServerInfo:
    pid: int
    port: int
    home: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def prefect_version() -> str:
    from importlib import metadata

    return metadata.version("prefect")


def _started_by_file() -> Path:
    """Which Prefect started which server: `{"pid": ..., "prefect": version}`, beside the state file (a field of
    server.json would make an older rollouts, which reads it as ServerInfo, find no server and start a second one)."""
    return home() / "server-prefect.json"


def _record_prefect(info: ServerInfo) -> None:
    _started_by_file().write_text(json.dumps({"pid": info.pid, "prefect": prefect_version()}))


def started_by(info: ServerInfo) -> str:
    """The version of Prefect that started this server ("" when not recorded for it)."""
    try:
        recorded = json.loads(_started_by_file().read_text())
    except (OSError, ValueError):
        return ""
    return str(recorded.get("prefect", "")) if recorded.get("pid") == info.pid else ""


def client_settings(info: ServerInfo) -> dict[str, str]:
    """Prefect settings for this process's clients of the local server: a server the installed Prefect started needs
    no API version check (each client context asks `/admin/version` once, the events and logs clients again, the
    events client building a TLS context for it); one that another Prefect started (an upgrade since) is checked."""
    return {"PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false"} if started_by(info) == prefect_version() else {}


def home() -> Path:
    return Path(os.environ.get("ROLLOUTS_HOME") or "~/.rollouts").expanduser() / "server"


def _state_file() -> Path:
    return home() / "server.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthy(info: ServerInfo, timeout: float = 2.0) -> bool:
    import httpx  # here, not at the top: `rollouts --help` and every command's parser load without it

    from rollouts.client.tls import tls_context

    try:
        return httpx.get(f"{info.api_url}/health", timeout=timeout, verify=tls_context()).status_code == 200
    except httpx.HTTPError:
        return False


def _recorded() -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _is_prefect_server(pid: int) -> bool:
    """The process is alive and, where /proc tells, a `prefect server` (not another process that took its pid)."""
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return b"prefect" in command and b"server" in command


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """One process at a time decides whether a local server must be started (and launches it)."""
    import fcntl

    root = home()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def status() -> ServerInfo | None:
    """The running local server, or None (a stale state file is removed)."""
    info = _recorded()
    if info is None:
        return None
    if _alive(info.pid) and healthy(info):
        return info
    if not _alive(info.pid):
        _state_file().unlink(missing_ok=True)
    return None


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port_found: int = sock.getsockname()[1]  # (host, port) of an AF_INET socket
            return port_found
    raise OSError("no free port on 127.0.0.1")


@dataclass
class Booting:
    """A local server launched and not yet known to be healthy."""

    info: ServerInfo
    process: subprocess.Popen[bytes] | None  # None: launched by another process, which is also waiting for it

    def _exited(self) -> str | None:
        if self.process is None:
            return None if _alive(self.info.pid) else "exited at start"
        code = self.process.poll()
        return None if code is None else f"exited at start (code {code})"

    def wait(self) -> ServerInfo:
        root = Path(self.info.home)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            exited = self._exited()
            if exited:
                if _recorded() == self.info:
                    _state_file().unlink(missing_ok=True)
                raise RuntimeError(f"the local Prefect server {exited}; see {root / 'server.log'}")
            if healthy(self.info, timeout=1.0):
                return self.info
            time.sleep(0.3)
        if self.process is not None:
            self.process.kill()
            if _recorded() == self.info:
                _state_file().unlink(missing_ok=True)
        raise RuntimeError(
            f"the local Prefect server did not answer within {START_TIMEOUT_S:.0f} s; see {root / 'server.log'}"
            + ("" if self.process is not None else " (`rollouts server stop` stops it)")
        )


def launch(port: int | None = None, *, quiet: bool = False) -> Booting:
    """Start the local server in the background (its own session: Ctrl-C of a run does not stop it); do not wait."""
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port(port or preferred_port())
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_API_URL": api_url,
    }
    if prefect_db.seed(root / "prefect", env):
        env.update(prefect_db.first_start())  # its migrations (~8 s) and block registration are in the database
    log = open(root / "server.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    info = ServerInfo(pid=process.pid, port=port, home=str(root))
    _record_prefect(info)
    _state_file().write_text(json.dumps(asdict(info)))  # from now on, another run waits for this server
    if not quiet:
        print(
            f"starting a local Prefect server at {info.ui_url} (it stays up for later runs; "
            "`rollouts server stop` stops it)...",
            file=sys.stderr,
            flush=True,
        )
    return Booting(info, process)


def find_or_launch(port: int | None = None, *, quiet: bool = False) -> ServerInfo | Booting:
    """The running local server; else the one another process has launched and is still starting; else a new one,
    launched in the background. Decided under the start lock, so two processes never launch two servers."""
    with _start_lock():
        running = status()
        if running is not None:
            return running
        recorded = _recorded()
        if recorded is not None and _is_prefect_server(recorded.pid):
            return Booting(recorded, None)
        return launch(port, quiet=quiet)


def start(port: int | None = None, *, quiet: bool = False) -> ServerInfo:
    """The running local server, or a new one started in the background once it is healthy."""
    found = find_or_launch(port, quiet=quiet)
    return found.wait() if isinstance(found, Booting) else found


def stop() -> bool:
    info = status()
    if info is None:
        try:
            info = ServerInfo(**json.loads(_state_file().read_text()))
        except (OSError, ValueError, TypeError):
            return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(info.pid):
        os.killpg(info.pid, signal.SIGKILL)
    _state_file().unlink(missing_ok=True)
    _started_by_file().unlink(missing_ok=True)
    return True


_booting: Booting | None = None


def check_api_url(api_url: str, timeout_s: float = 5.0) -> None:
    """The user's PREFECT_API_URL answers; one clear line (a ConfigError) instead of a client traceback later."""
    import httpx

    from rollouts.client.tls import tls_context

    try:
        answered = (
            httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s, verify=tls_context()).status_code == 200
        )
    except httpx.HTTPError as exc:
        reason = type(exc).__name__
    else:
        if answered:
            return
        reason = "its /health did not answer 200"
    raise ConfigError(
        f"PREFECT_API_URL={api_url} does not answer ({reason}): start that Prefect server, or unset "
        "PREFECT_API_URL to let rollouts use its local one"
    )


def use_prefect_server(*, wait: bool = True) -> str | None:
    """Point this process (and its Dask workers, which inherit the environment) at a Prefect API; return its UI URL.

    The user's PREFECT_API_URL wins; `ROLLOUTS_SERVER=ephemeral` leaves Prefect's embedded server (no UI). With
    `wait=False` a server that has to be started is only launched (its URL is known at once) and
    `await_prefect_server` waits for it: a first run imports Prefect and the flow while the server's database is
    created (its migrations alone take ~8 s on 2 cores)."""
    global _booting
    if os.environ.get("PREFECT_API_URL"):
        check_api_url(os.environ["PREFECT_API_URL"])
        return os.environ.get("PREFECT_UI_URL") or os.environ["PREFECT_API_URL"].removesuffix("/api")
    if os.environ.get("ROLLOUTS_SERVER", "").lower() == "ephemeral":
        seed_embedded()
        return None
    found = find_or_launch()
    if isinstance(found, Booting):
        _booting = found
    info = found.info if isinstance(found, Booting) else found
    os.environ["PREFECT_API_URL"] = info.api_url
    os.environ["PREFECT_UI_URL"] = info.ui_url
    for name, value in client_settings(info).items():
        os.environ.setdefault(name, value)  # a user's own setting wins
    if wait:
        await_prefect_server()
    return info.ui_url


def seed_embedded() -> None:
    """Prefect's embedded server keeps its database in `PREFECT_HOME` (default `~/.prefect`) and starts anew with
    every run: its first start there is seeded from the snapshot like the local server's (~8 s of migrations)."""
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    if prefect_db.seed(prefect_home):
        os.environ.update(prefect_db.first_start())  # the subprocess server inherits this process's environment


def prefect_server_booting() -> bool:
    """Whether `use_prefect_server(wait=False)` launched a server that `await_prefect_server` has not waited for."""
    return _booting is not None


def await_prefect_server() -> None:
    """Wait until a server launched by `use_prefect_server(wait=False)` answers (nothing to do otherwise)."""
    global _booting
    if _booting is not None:
        booting, _booting = _booting, None
        booting.wait()


def cmd_server(args: argparse.Namespace) -> int:
    if args.action == "start":
        try:
            info = start(args.port)
        except (RuntimeError, ConfigError) as exc:
            error(str(exc))
            return EXIT_USAGE
        print(f"Prefect server at {info.ui_url} (API {info.api_url}, pid {info.pid}, data in {info.home})")
    elif args.action == "stop":
        print("stopped the local Prefect server" if stop() else "no local Prefect server is running")
    else:
        running = status()
        if running is None:
            print("no local Prefect server is running (`rollouts server start` starts one)")
            return 3
        print(f"running at {running.ui_url} (API {running.api_url}, pid {running.pid}, data in {running.home})")
    return EXIT_OK


def add_server_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "server",
        help=command_help("server"),
        description=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port for start (default $ROLLOUTS_SERVER_PORT or {DEFAULT_PORT}, or a free one)",
    )
    parser.set_defaults(func=cmd_server)

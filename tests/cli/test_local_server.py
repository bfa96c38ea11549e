"""The long-lived local Prefect server: started by the first run on a machine (while that run imports Prefect and
the flow), found by the next run, and stopped by `rollouts server stop`. Two first runs at once start one server."""

from __future__ import annotations

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import httpx

from commands import prefect_db
from tests.cli.conftest import rollouts
from tests.integration.conftest import math_rows, write_jsonl


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _servers_of(prefect_home: Path, setting: str = "") -> list[int]:
    """Pids of the `prefect server` processes whose PREFECT_HOME is this one (and that have this setting)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"prefect\0server\0start" in command
            and f"PREFECT_HOME={prefect_home}".encode() in environ
            and (not setting or setting.encode() in environ)
        ):
            found.append(int(proc.name))
    return found


def test_the_first_run_starts_the_local_server_and_the_next_run_finds_it(tmp_path, sim):
    port = _free_port()  # the port it prefers: ROLLOUTS_SERVER_PORT (4200 when unset)
    env = {"ROLLOUTS_HOME": str(tmp_path / "home"), "ROLLOUTS_SERVER_PORT": str(port)}
    clean = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL", "ROLLOUTS_SERVER")}
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(4))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean)
    try:
        args = (
            "collect",
            str(src),
            "--model-url",
            sim.url,
            "--model",
            "sim-model",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
            "--num-repeats",
            "1",
        )
        # Two first runs at once (two terminals): one starts the server, the other waits for that one.
        with ThreadPoolExecutor(2) as both:
            firsts = list(both.map(lambda name: rollouts(*args, "--run-name", name, env=env), ("first", "also-first")))
        assert [done.code for done in firsts] == [0, 0], [done.err[-2000:] for done in firsts]
        starting = f"starting a local Prefect server at http://127.0.0.1:{port}"
        assert sum(starting in done.err for done in firsts) == 1, [done.err[-2000:] for done in firsts]
        prefect_home = tmp_path / "home" / "server" / "prefect"
        assert len(_servers_of(prefect_home)) == 1
        # The state file is the one an older rollouts reads too; beside it, which Prefect started that server: its
        # clients of the same Prefect skip the API version check (commands/server.py client_settings).
        state = json.loads((tmp_path / "home" / "server" / "server.json").read_text())
        assert set(state) == {"pid", "port", "home"}
        started = json.loads((tmp_path / "home" / "server" / "server-prefect.json").read_text())
        assert started == {"pid": state["pid"], "prefect": metadata.version("prefect")}
        if prefect_db.snapshot_path().exists():
            # Its database came at the head revision with the block types registered: the server neither checked
            # its migrations nor registered them again, and Prefect's memo of the registration, written by that
            # start, spares the starts after it too.
            assert _servers_of(prefect_home, "PREFECT_API_DATABASE_MIGRATE_ON_START=false")
            assert _servers_of(prefect_home, "PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false")
            assert "block_auto_registration" in (prefect_home / "memo_store.toml").read_text()
            types = httpx.post(f"http://127.0.0.1:{port}/api/block_types/filter", json={}, timeout=10).json()
            assert {"secret", "local-file-system", "webhook"} <= {block_type["slug"] for block_type in types}
        status = rollouts("server", "status", env=env)
        assert status.code == 0 and status.out.startswith(f"running at http://127.0.0.1:{port}")
        second = rollouts(*args, "--run-name", "second", env=env)
        assert second.code == 0, second.err[-2000:]
        assert "starting a local Prefect server" not in second.err
        for name in ("first", "also-first", "second"):
            manifest = json.loads((tmp_path / "runs" / name / "manifest.json").read_text())
            assert manifest["status"] == "completed" and manifest["counts"]["rollouts_ok"] == 4
    finally:
        stopped = rollouts("server", "stop", env=env)
        os.environ.clear()
        os.environ.update(saved)
    assert stopped.out.strip() == "stopped the local Prefect server"
    assert rollouts("server", "status", env=env).code == 3
    assert _servers_of(tmp_path / "home" / "server" / "prefect") == []


def test_a_server_port_that_is_not_a_number_is_one_line(tmp_path):
    done = rollouts("server", "start", env={"ROLLOUTS_HOME": str(tmp_path / "home"), "ROLLOUTS_SERVER_PORT": "42OO"})
    assert done.code == 2 and done.fast
    assert done.err.strip() == "error: ROLLOUTS_SERVER_PORT='42OO' is not a port number (1-65535)"


def test_clients_skip_the_api_version_check_only_with_a_server_the_installed_prefect_started(tmp_path, monkeypatch):
    from commands.server import ServerInfo, client_settings

    monkeypatch.setenv("ROLLOUTS_HOME", str(tmp_path))
    (tmp_path / "server").mkdir()
    started = tmp_path / "server" / "server-prefect.json"
    server = ServerInfo(pid=41, port=4200, home=str(tmp_path / "server"))
    assert client_settings(server) == {}  # not recorded (a server an older rollouts started)
    started.write_text(json.dumps({"pid": 41, "prefect": metadata.version("prefect")}))
    assert client_settings(server) == {"PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false"}
    started.write_text(json.dumps({"pid": 41, "prefect": "2.0.0"}))  # Prefect upgraded since
    assert client_settings(server) == {}
    started.write_text(json.dumps({"pid": 40, "prefect": metadata.version("prefect")}))  # of an earlier server
    assert client_settings(server) == {}

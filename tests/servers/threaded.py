"""Serve an aiohttp app from a daemon thread with its own event loop, on a socket bound on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web


def serve_in_thread(
    app: web.Application, host: str, port: int, name: str, *, shutdown_timeout: float = 60.0
) -> tuple[asyncio.AbstractEventLoop, web.AppRunner, threading.Thread, int]:
    """(loop, runner, thread, port) of the started app; a start that fails raises with its cause."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    ready = threading.Event()
    problems: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:  # surfaced to the caller below
            problems.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not ready.wait(timeout=10) or problems:
        raise RuntimeError(f"{name} did not start: {problems}")
    return loop, runner, thread, port

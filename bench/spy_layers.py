"""Group a py-spy `--format raw --native` recording by layer: httpx, aiohttp, asyncio, our code, orjson, Prefect...

    python bench/spy_layers.py bench/out/threads-p256.txt

Each sample is charged to the innermost frame that names a layer: a native extension's frame (orjson, aiohttp's C
parser, multidict, yarl) when it is the leaf's own code, else the innermost Python frame's package. Samples of a
thread that waits (in `select`, a lock, a queue, `sleep`) are counted apart as `waiting`, not as CPU. Processes are
grouped by role: the collector (the flow's process and its worker processes) and the Prefect API server.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")
_WAIT_NATIVE = (
    "PyThread_acquire_lock",
    "epoll_wait",
    "select_poll",
    "select_epoll",
    "time_sleep",
    "pysleep",
    "sem_wait",
    "pthread_cond",
    "futex",
    "_queue_SimpleQueue_get",
)
_WAIT_PY = {
    ("select", "selectors.py"),
    ("wait", "threading.py"),
    ("get", "queue.py"),
    ("_worker", "concurrent/futures/thread.py"),
    ("_wait_for_tstate_lock", "threading.py"),
    ("join", "threading.py"),
}
_STDLIB = {
    "concurrent",
    "json",
    "logging",
    "threading",
    "selectors",
    "contextlib",
    "queue",
    "ssl",
    "socket",
    "urllib",
    "http",
    "email",
    "enum",
    "functools",
    "typing",
    "re",
    "collections",
    "abc",
    "dataclasses",
    "uuid",
    "random",
    "hashlib",
    "weakref",
    "copy",
    "inspect",
    "traceback",
    "base64",
    "datetime",
    "ipaddress",
    "encodings",
}
OURS = ("rollouts/", "tasks/", "flows/", "commands/", "blocks/", "bench/")
NATIVE_LAYERS = {
    "orjson": "orjson",
    "_http_parser": "aiohttp",
    "_http_writer": "aiohttp",
    "_websocket": "aiohttp",
    "multidict": "multidict",
    "_quoting": "yarl",
    "yarl": "yarl",
    "_ssl": "ssl",
    "pydantic_core": "pydantic",
    "_json": "json (stdlib)",
    "uvloop": "uvloop",
    "loop.cpython": "uvloop",
}


def process_role(header: str) -> str:
    if "uvicorn" in header:
        return "Prefect API server"
    if "rollouts.sim" in header:
        return "sim server"
    return "collector"


def python_layer(where: str) -> str:
    path = where.rsplit(":", 1)[0]
    if path.startswith(OURS) or "/work/" in path and "/site-packages/" not in path:
        return "our code"
    if path.startswith("<frozen"):
        return "stdlib"
    top = path.split("/", 1)[0]
    if path.startswith("asyncio/"):
        return "asyncio"
    if top in ("httpx", "httpcore"):
        return "httpx"
    if top == "httpx_aiohttp":
        return "httpx-aiohttp"
    if top == "psutil":
        return "benchmark's CPU sampler"
    if top in ("aiohttp", "multidict", "yarl", "prefect", "pydantic", "pydantic_core", "anyio", "fsspec", "orjson"):
        return {"pydantic_core": "pydantic"}.get(top, top)
    return "stdlib" if "/" not in path or top in _STDLIB else top


def classify(frames: list[str]) -> str:
    """Layer of one sample; frames are root first. Standard-library frames other than asyncio's are charged to
    their caller's layer (httpx's `urllib.parse` calls are httpx's cost)."""
    stdlib_seen = False
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        if match is None:
            continue
        name, where = match["name"], match["where"]
        if ".py:" in where or where.startswith("<frozen"):
            file = where.rsplit(":", 1)[0]
            if not stdlib_seen and any(name == n and file.endswith(f) for n, f in _WAIT_PY):
                return "waiting"
            layer = python_layer(where)
            if layer == "stdlib":
                stdlib_seen = True
                continue
            return layer
        if any(name.startswith(w) or w in name for w in _WAIT_NATIVE):
            return "waiting"
        for key, layer in NATIVE_LAYERS.items():
            if key in where:
                return layer
    return "stdlib" if stdlib_seen else "native (other)"


def layers(path: Path) -> dict[str, Counter[str]]:
    by_role: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        processes = [p for p in parts if p.startswith("process ")]
        frames = [p for p in parts if not p.startswith(("process ", "thread "))]
        role = process_role(processes[-1] if processes else "")
        by_role.setdefault(role, Counter())[classify(frames)] += int(count)
    return by_role


def report(path: Path) -> str:
    lines = [f"CPU samples by layer, {path.name} (waiting threads excluded from the shares):"]
    for role, counts in layers(path).items():
        busy = sum(v for k, v in counts.items() if k != "waiting")
        shares = ", ".join(
            f"{k} {100 * v / busy:.0f}%" for k, v in counts.most_common() if k != "waiting" and v / busy >= 0.005
        )
        lines.append(f"  {role} ({busy} busy samples): {shares}")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(report(Path(arg)))

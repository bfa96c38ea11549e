"""Flow runs of `rollouts collect` processes that died (kill -9, OOM): found on the next start and ended Crashed.

A CLI run lives in its own process with Prefect's heartbeats off (joining their thread costs ~1 s at exit), so nothing
else would ever move a killed process's flow run out of `Running`. Each CLI flow run is tagged with its host and pid
(and the process's start time, so a recycled pid is not mistaken for the owner); every `rollouts collect` first ends
the runs of this host whose process is gone.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

CLI_TAG = "rollouts-cli"


@dataclass(frozen=True)
class Owner:
    """The process that runs a flow run: its host, pid and start time (seconds since the epoch, rounded)."""

    host: str
    pid: int
    started: int

    def tags(self) -> list[str]:
        return [CLI_TAG, f"host:{self.host}", f"pid:{self.pid}", f"started:{self.started}"]

    @classmethod
    def of_tags(cls, tags: list[str]) -> Owner | None:
        fields = dict(tag.split(":", 1) for tag in tags if ":" in tag)
        try:
            return cls(fields["host"], int(fields["pid"]), int(fields["started"]))
        except (KeyError, ValueError):
            return None

    def alive(self) -> bool:
        """On this host only: a pid that exists and started when the owner did (not a recycled pid)."""
        try:
            return bool(round(psutil.Process(self.pid).create_time()) == self.started)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


def this_process() -> Owner:
    return Owner(socket.gethostname(), os.getpid(), round(psutil.Process().create_time()))


def plain_http_settings() -> dict[str, Any] | None:
    """For a Prefect API on plain http:// (the local server): the process's TLS context, so Prefect's client does
    not build one of its own (~25 ms of CPU loading a CA bundle it never uses). Any other API: Prefect's own TLS
    settings apply."""
    from prefect.settings import get_current_settings

    from rollouts.client.tls import tls_context

    url = get_current_settings().api.url or ""
    return {"verify": tls_context()} if url.startswith("http://") else None


def reap_in_background() -> Callable[[], None]:
    """`reap_stale_runs` in a thread of its own, started now; the wait for it, to call before the process ends. Its
    reading of the API overlaps what this process does meanwhile (importing the flow; ~0.1 s of a warm run's wall).
    The runs it ends are never this process's own, so the new flow run may start meanwhile. With Prefect's embedded
    server (no PREFECT_API_URL), which its first client starts, it runs here and now."""
    if not os.environ.get("PREFECT_API_URL"):
        reap_stale_runs()
        return lambda: None
    import prefect.client.orchestration
    import prefect.client.schemas.filters
    import prefect.states  # noqa: F401 (the thread's imports, done here: none runs beside the caller's)

    reaper = threading.Thread(target=reap_stale_runs, name="reap-stale-runs", daemon=True)
    reaper.start()
    return reaper.join


def reap_stale_runs(limit: int = 200) -> int:
    """End Crashed the `Running`/`Pending` CLI flow runs of this host whose process is gone; how many it ended.

    Best effort: a Prefect API that cannot be read or written here must not stop a collection from starting."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    me = this_process()
    ended = 0
    try:
        with get_client(sync_client=True, httpx_settings=plain_http_settings()) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[CLI_TAG, f"host:{me.host}"]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])),
                ),
                limit=limit,
            )
            for run in runs:
                owner = Owner.of_tags(list(run.tags))
                if owner is None or owner == me or owner.alive():
                    continue
                message = f"its process (pid {owner.pid} on {owner.host}) ended without finishing the flow run"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                ended += 1
    except Exception:  # noqa: BLE001 (best effort, see above)
        return ended
    return ended

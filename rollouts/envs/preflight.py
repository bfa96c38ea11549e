"""Before a run starts: every `--remote-env` resources server answers, or the run is refused with the reason."""

from __future__ import annotations

import httpx

from rollouts.client.retry import transport_failure
from rollouts.errors import ConfigError
from rollouts.redact import redact_url


def check_environment(name: str, url: str, timeout: float = 10.0) -> None:
    """Fail fast, before any prompt is sharded, when a resources server cannot be reached.

    `GET {url}/` has no side effect (a NeMo Gym server answers 404 there, which proves it is up); a refused or timed
    out connection, or a gateway answering 502-504 for a server behind it, is a ConfigError saying which.
    """

    shown = redact_url(url)
    try:
        reply = httpx.get(f"{url.rstrip('/')}/", timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"cannot reach remote environment {name!r} at {shown} ({transport_failure(exc).label}); "
            f"is the resources server running, and is --remote-env {name}=URL right?"
        ) from None
    if reply.status_code in (502, 503, 504):
        raise ConfigError(
            f"remote environment {name!r} at {shown} answered {reply.status_code}: the server behind "
            "it is down or still starting"
        )


def check_environments(remote: dict[str, str], timeout: float = 10.0) -> None:
    """`check_environment` for every `--remote-env NAME=URL`."""
    for name, url in remote.items():
        check_environment(name, url, timeout)

"""What one collector process owns for `--parallel`: the in-flight limiter, its HTTP client, and with `auto` the
controller.

Fixed `--parallel N`: a limiter of N and a client pool of N connections (requests never queue inside the pool).
`--parallel auto`: a pool of `max_parallel` connections, whose transport logs every model request attempt; the limiter
starts at `initial_parallel` (`min_parallel` when not given) and the AIMD controller resizes it. Either way `stop`
writes the limit over time for the run's timeline, so `profile/timeline.csv` always has its `parallel` column.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import http_client
from rollouts.collector.limits import InflightLimiter
from rollouts.config import CollectConfig
from rollouts.storage import Store
from rollouts.tune.aimd import (
    AttemptLog,
    AutoParallel,
    ControllerConfig,
    observed_http_client,
    server_metrics_url,
    write_trace,
)


class ParallelControl:
    """Create it once per run and process (not per shard); `start` and `stop` on the loop that runs the requests."""

    def __init__(
        self,
        parallel: int | str,
        *,
        model_url: str,
        request_timeout: float,
        auth: EndpointAuth | None = None,
        min_parallel: int = 8,
        max_parallel: int = 1024,
        initial_parallel: int | None = None,
        use_server_metrics: bool = True,
    ) -> None:
        self.auto = parallel == "auto"
        if not self.auto and (not isinstance(parallel, int) or parallel < 1):
            raise ValueError(f"--parallel must be a positive integer or 'auto' (got {parallel!r})")
        self.model_url, self.request_timeout, self.auth = model_url, request_timeout, auth
        self.started = False
        self.config = (
            ControllerConfig(min_parallel=min_parallel, max_parallel=max_parallel, initial=initial_parallel)
            if self.auto
            else None
        )
        self.limit = self.config.start if self.config else int(parallel)
        # The pool bounds what the limiter may ever allow: the fixed value, or the controller's ceiling.
        self.pool_size = max_parallel if self.auto else int(parallel)
        self.limiter = InflightLimiter(self.limit)
        self.log = AttemptLog() if self.auto else None
        self.use_server_metrics = use_server_metrics
        self._auto: AutoParallel | None = None
        self._fixed_trace: list[dict[str, Any]] = []

    @classmethod
    def for_run(cls, config: CollectConfig, auth: EndpointAuth) -> ParallelControl:
        """The control of a collection run's `--parallel`, sending with the run's key and headers."""
        c = config.concurrency
        return cls(
            c.parallel,
            model_url=config.endpoint.base_url,
            request_timeout=config.endpoint.request_timeout,
            auth=auth,
            min_parallel=c.min_parallel,
            max_parallel=c.max_parallel,
            initial_parallel=c.initial_parallel,
        )

    @property
    def workers(self) -> int:
        """Worker coroutines a shard needs at most: one per slot the limiter may ever grant."""
        return self.pool_size

    def http_client(self) -> httpx.AsyncClient:
        """The run's client: create it inside the loop that uses it, as `model.http_client` requires."""
        if self.log is not None:
            return observed_http_client(self.pool_size, self.request_timeout, self.auth, self.log, self.model_url)
        return http_client(self.pool_size, self.request_timeout, self.auth)

    def start(self, http: httpx.AsyncClient | None = None) -> None:
        """Begin controlling (auto) or note the fixed limit; `http` is used for vLLM's /metrics when reachable."""
        self.started = True
        if self.config is None:
            self._fixed_trace = [{"t": time.time(), "limit": self.limit, "reason": "fixed", "phase": "fixed"}]
            return
        metrics = server_metrics_url(self.model_url) if self.use_server_metrics and http is not None else None
        self._auto = AutoParallel(self.limiter, self.config, self.log, metrics_url=metrics, http=http).start()  # type: ignore[arg-type]

    async def stop(self, store: Store | None = None) -> list[dict[str, Any]]:
        """Stop controlling; with a store, write this process's trace to `profile/parallel/`. Returns the trace."""
        if self._auto is not None:
            await self._auto.stop()
            trace = self._auto.trace
        else:
            trace = self._fixed_trace + [{"t": time.time(), "limit": 0, "reason": "stopped", "phase": "fixed"}]
        if store is not None:
            write_trace(store, trace)
        return trace

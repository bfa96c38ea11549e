"""Artifacts sent beside a run instead of in its way.

Each artifact is a synchronous POST to the Prefect server (~10 per run; 0.3-0.5 s of a warm run's wall at load 5).
Inside `sent_beside()` (around the collection, in the flow's thread) `publish` hands the call to one thread of its
own, with the caller's context (so the artifact names the flow run and task run that published it), and returns at
once; the artifacts go out in the order published, and `sent_beside` waits for all of them when it exits, on every
path (a return, an exception, Ctrl-C), so the flow run never ends before its artifacts exist. Outside it (a task run
in a process of its own, a test calling a task's function) `publish` creates the artifact at once, as before.
A progress artifact (`Progress`) is created and moved the same way: its updates queue behind its creation on that one
thread, which knows its id by then, so the flow never waits for the server to give it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

_SENDER: contextvars.ContextVar[_Sender | None] = contextvars.ContextVar("artifact_sender", default=None)


class _Sender:
    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="artifacts")
        self.pending: list[Future[Any]] = []

    def send(self, create: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        context = contextvars.copy_context()  # the flow run and task run the artifact belongs to, Prefect's client
        self.pending.append(self.pool.submit(lambda: context.run(create, **kwargs)))

    def wait(self) -> list[BaseException]:
        """Wait for every artifact sent so far; the errors of those that failed (each reported once)."""
        pending, self.pending = self.pending, []
        return [error for future in pending if (error := future.exception()) is not None]

    def close(self) -> list[BaseException]:
        """Wait for every artifact sent; the errors of those that failed."""
        self.pool.shutdown(wait=True)
        return self.wait()


def publish(create: Callable[..., Any], /, **kwargs: Any) -> None:
    """Create an artifact (`create(**kwargs)`): beside the run inside `sent_beside()`, otherwise now."""
    sender = _SENDER.get()
    if sender is None:
        create(**kwargs)
    else:
        sender.send(create, kwargs)


def flush_artifacts() -> None:
    """Wait until every artifact published so far exists; the first that failed raises here. A run calls it before it
    announces its end, so no `completed` event goes out for a run that then fails on an artifact."""
    sender = _SENDER.get()
    if sender is not None and (errors := sender.wait()):
        raise errors[0]


class Progress:
    """A progress artifact created and moved through `publish`: `Progress(create_progress_artifact,
    update_progress_artifact, description=...)`, then `.move(percent)`. Updates go out in order after its creation
    (a creation that failed is reported by `sent_beside`; its updates are then skipped)."""

    def __init__(
        self, create: Callable[..., Any], update: Callable[..., Any], *, description: str, progress: float = 0.0
    ) -> None:
        self._create, self._update = create, update
        self.artifact_id: Any = None
        publish(self._created, progress=progress, description=description)

    def _created(self, **kwargs: Any) -> None:
        self.artifact_id = self._create(**kwargs)

    def move(self, progress: float) -> None:
        publish(self._moved, progress=progress)

    def _moved(self, progress: float) -> None:
        if self.artifact_id is not None:
            self._update(artifact_id=self.artifact_id, progress=progress)


@contextmanager
def sent_beside() -> Iterator[None]:
    """Artifacts published inside go out from a thread of their own; all are sent before this exits. The first that
    failed raises here when the body did not (when it did, its own exception goes on and the failure is logged)."""
    sender = _Sender()
    token = _SENDER.set(sender)
    body_failed = True
    try:
        yield
        body_failed = False
    finally:
        _SENDER.reset(token)
        errors = sender.close()
        if errors and body_failed:
            logging.getLogger(__name__).error("%d artifacts not created: %r", len(errors), errors[0])
        elif errors:
            raise errors[0]

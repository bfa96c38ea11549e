"""Artifacts sent beside a run: `publish` returns at once inside `sent_beside`, every artifact exists when it exits
(in the order published, with the publisher's context), and a failure is never silent."""

from __future__ import annotations

import contextvars
import logging
import threading

import pytest

from tasks.artifacts import Progress, flush_artifacts, publish, sent_beside

OWNER: contextvars.ContextVar[str] = contextvars.ContextVar("owner", default="")


def test_artifacts_go_out_from_another_thread_and_are_all_sent_when_the_run_ends():
    release, created = threading.Event(), []

    def create(key: str) -> None:
        release.wait(timeout=30)
        created.append((key, OWNER.get(), threading.current_thread() is threading.main_thread()))

    with sent_beside():
        OWNER.set("task run 1")
        publish(create, key="rollout-health")
        OWNER.set("task run 2")
        publish(create, key="run-report")
        assert created == []  # the run goes on while its artifacts wait to be sent
        release.set()
    assert created == [("rollout-health", "task run 1", False), ("run-report", "task run 2", False)]


def test_outside_a_run_an_artifact_is_created_at_once():
    created = []
    publish(lambda key: created.append((key, threading.current_thread() is threading.main_thread())), key="card")
    assert created == [("card", True)]


def test_an_artifact_that_fails_raises_when_the_run_ends():
    def refused(key: str) -> None:
        raise RuntimeError(f"server refused {key}")

    with pytest.raises(RuntimeError, match="server refused card"), sent_beside():
        publish(refused, key="card")


def test_a_failing_run_keeps_its_own_error_and_logs_the_artifacts_not_created(caplog):
    def refused(key: str) -> None:
        raise RuntimeError(f"server refused {key}")

    sent = []
    with caplog.at_level(logging.ERROR), pytest.raises(KeyboardInterrupt), sent_beside():
        publish(lambda key: sent.append(key), key="health")
        publish(refused, key="card")
        raise KeyboardInterrupt
    assert sent == ["health"]  # what was published before the interrupt is still sent
    assert "1 artifacts not created" in caplog.text and "server refused card" in caplog.text


def test_a_flush_waits_for_every_artifact_so_far_and_raises_a_failure_once(caplog):
    """A run flushes before it announces its end: a failed artifact fails it there, before any `completed` event."""
    release, created = threading.Event(), []

    def slow(key: str) -> None:
        release.wait(timeout=30)
        created.append(key)

    def refused(key: str) -> None:
        raise RuntimeError(f"server refused {key}")

    announced = []
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="server refused card"), sent_beside():
        publish(slow, key="health")
        publish(refused, key="card")
        threading.Timer(0.05, release.set).start()
        flush_artifacts()
        announced.append("completed")  # never reached
    assert created == ["health"] and announced == []
    assert "artifacts not created" not in caplog.text  # reported once, by the flush, not again at the exit


def test_a_flush_outside_a_run_does_nothing():
    flush_artifacts()


def test_a_progress_artifact_is_created_and_moved_beside_the_run_its_updates_after_its_creation():
    release, calls = threading.Event(), []

    def create(progress: float, description: str) -> str:
        release.wait(timeout=30)  # a slow server: the run does not wait for the artifact's id
        calls.append(("create", progress, description, threading.current_thread() is threading.main_thread()))
        return "artifact-1"

    def update(artifact_id: str, progress: float) -> None:
        calls.append(("update", artifact_id, progress))

    with sent_beside():
        progress = Progress(create, update, description="Shards verified")
        progress.move(50.0)
        progress.move(100.0)
        assert calls == []
        release.set()
    assert calls == [
        ("create", 0.0, "Shards verified", False),
        ("update", "artifact-1", 50.0),
        ("update", "artifact-1", 100.0),
    ]


def test_a_progress_artifact_not_created_is_not_moved_and_its_failure_raises_when_the_run_ends():
    updates = []

    def refused(progress: float, description: str) -> str:
        raise RuntimeError("server refused the progress artifact")

    with pytest.raises(RuntimeError, match="refused the progress artifact"), sent_beside():
        Progress(refused, lambda **kwargs: updates.append(kwargs), description="Shards verified").move(100.0)
    assert updates == []

"""Session-wide settings: offline Prefect, and fixtures for the real servers the tests talk to over loopback."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Prefect: no telemetry, a patient embedded-server start under CI load.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# A command run without PREFECT_API_URL starts the long-lived local Prefect server: keep it out of the user's home,
# and stop it when the session ends (pytest_sessionfinish).
os.environ["ROLLOUTS_HOME"] = tempfile.mkdtemp(prefix="rollouts-home-")


def pytest_sessionfinish(session, exitstatus):
    from commands.server import stop

    stop()


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/, tests/cli/ and tests/realmodel/ is marked `integration`:
    `pytest -m "not integration"` is the fast suite. Everything under tests/realmodel/ is also marked `realmodel`
    (`pytest -m realmodel` runs only the real-model tier)."""
    import pytest

    for item in items:
        parts = set(item.path.parts)
        if {"integration", "cli", "realmodel"} & parts:
            item.add_marker(pytest.mark.integration)
        if "realmodel" in parts:
            item.add_marker(pytest.mark.realmodel)

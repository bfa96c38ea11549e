"""Session-wide settings: offline Prefect, and fixtures for the real servers the tests talk to over loopback."""

from __future__ import annotations

import os

# Before anything imports Prefect: no telemetry, a patient embedded-server start under CI load.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ and tests/cli/ is marked `integration`: `pytest -m "not integration"` is
    the fast suite."""
    import pytest

    for item in items:
        if {"integration", "cli"} & set(item.path.parts):
            item.add_marker(pytest.mark.integration)

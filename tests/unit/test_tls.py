"""The HTTP clients a run builds share one TLS context: the CA bundle is loaded once per process, not per client."""

from __future__ import annotations

import ssl

import pytest

from commands.server import ServerInfo, healthy
from commands.stale_runs import plain_http_settings
from rollouts.client.model import check_endpoint
from rollouts.client.tls import tls_context
from rollouts.client.transport import cookie_free_transport


@pytest.fixture()
def ca_loads(monkeypatch) -> list[object]:
    """Every CA bundle loaded into a TLS context while the test runs (the process's context is built anew)."""
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        load(self, *args, **kwargs)

    tls_context.cache_clear()
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    yield loads
    tls_context.cache_clear()


def test_the_model_check_the_server_health_and_the_collectors_transport_load_the_ca_bundle_once(sim, ca_loads):
    check_endpoint(sim.url, model="sim-model")
    assert not healthy(ServerInfo(pid=0, port=sim.port, home=""), timeout=5.0)  # the sim has no /api/health
    transport = cookie_free_transport()
    assert transport.ssl_context is tls_context()  # type: ignore[attr-defined]
    assert len(ca_loads) == 1


def test_prefects_own_tls_settings_apply_to_an_api_that_is_not_plain_http(monkeypatch):
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": "http://127.0.0.1:4200/api"}):
        assert plain_http_settings() == {"verify": tls_context()}
    with temporary_settings(updates={"api.url": "https://prefect.example.com/api"}):
        assert plain_http_settings() is None

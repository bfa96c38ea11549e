"""One TLS context per process for the HTTP clients built here.

Every httpx client, and every httpx-aiohttp transport, built without a context builds its own, loading the CA bundle
each time: ~25 ms of CPU on these cores, and a `rollouts collect` built four of them before any model call (the model
server's check, the Prefect server's health, the stale-run reaping's client, the collector's transport). A context is
safe to share between clients and threads; it is built the way httpx builds its own (certifi's bundle, or
SSL_CERT_FILE / SSL_CERT_DIR when set), once, when the first client asks.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's verifying TLS context: pass it as `verify=` to an httpx client or transport."""
    import httpx

    return httpx.create_ssl_context()

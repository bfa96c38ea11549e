"""Secrets of a model endpoint, resolved at run time and kept out of configs, manifests, logs and task parameters."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EndpointAuth:
    """The API key and extra headers sent to the model server; `repr` never shows them."""

    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"EndpointAuth(api_key={'***' if self.api_key else None}, headers={sorted(self.headers)})"

    __str__ = __repr__

    def request_headers(self) -> dict[str, str]:
        """Headers for every request: the extra headers, then the Bearer token (the key wins over a stray header)."""
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


NO_AUTH = EndpointAuth()

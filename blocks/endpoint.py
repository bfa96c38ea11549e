"""ModelEndpoint block: an OpenAI-compatible server, its model, and the key and headers it needs (kept as secrets)."""

from typing import Literal

import httpx
from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr, field_validator

from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import http_client
from rollouts.places import http_url
from rollouts.redact import refuse_url_credentials


class ModelEndpoint(Block):
    """The model server a collection run samples from (vLLM, SGLang, OpenAI, NIM...)."""

    _block_type_name = "Model Endpoint"
    _block_type_slug = "rollouts-model-endpoint"
    _description = (
        "An OpenAI-compatible model server for rollout collection: base URL, model name, API, "
        "API key and extra headers (stored encrypted), connection limit and request timeout."
    )
    # a refused value is not echoed in the error: it holds the credential the refusal is about
    model_config = {**Block.model_config, "hide_input_in_errors": True}

    base_url: str = Field(title="Base URL", description="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
    model: str = Field(description="Model name sent with each request, e.g. Qwen/Qwen3-8B")
    api: Literal["chat", "responses"] = Field("chat", title="API", description="Chat Completions or the Responses API")
    api_key: SecretStr | None = Field(None, title="API key", description="Sent as a Bearer token")
    extra_headers: SecretDict | None = Field(
        None, description='Extra HTTP headers sent with every request, e.g. {"OpenAI-Organization": "org-..."}'
    )
    connection_limit: int = Field(
        256,
        ge=1,
        description="Most connections (and so rollouts in flight) per collector process; caps the run's --parallel",
    )
    request_timeout: float = Field(600.0, gt=0, description="Seconds per model request")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = http_url(value, "base_url")
        return refuse_url_credentials(url, "base_url", "the block keeps the key in api_key or extra_headers, encrypted")

    def auth(self) -> EndpointAuth:
        """The key and headers, revealed for the requests only."""
        headers = self.extra_headers.get_secret_value() if self.extra_headers else {}
        return EndpointAuth(
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            headers={str(k): str(v) for k, v in (headers or {}).items()},
        )

    def get_client(self, limit: int | None = None) -> httpx.AsyncClient:
        """The configured client (create it inside the task that uses it: a client is bound to its event loop)."""
        return http_client(
            min(limit or self.connection_limit, self.connection_limit), self.request_timeout, self.auth()
        )

"""RolloutStorage block: where runs are written (local path or s3://bucket/prefix) and the filesystem's options."""

from typing import Any

import fsspec
from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, field_validator

from rollouts.redact import refuse_url_credentials, secret_option_keys
from rollouts.storage import filesystem


class RolloutStorage(Block):
    """A place for runs: a local path or any fsspec URL, with its options; credentials are stored encrypted."""

    _block_type_name = "Rollout Storage"
    _block_type_slug = "rollouts-storage"
    _description = (
        "Where rollout runs are written: a local path or an fsspec URL such as s3://bucket/prefix, "
        "with fsspec options (endpoint, region...) and credentials kept as secrets."
    )
    # a refused value is not echoed in the error: it holds the credential the refusal is about
    model_config = {**Block.model_config, "hide_input_in_errors": True}

    url: str = Field(title="URL", description="Local path or fsspec URL where runs go, e.g. s3://bucket/runs")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description='fsspec options that are not secret, e.g. {"client_kwargs": {"endpoint_url": "http://minio:9000"}}',
    )
    secret_options: SecretDict | None = Field(
        None,
        description='fsspec options that are secret, merged over the others, e.g. {"key": "AKIA...", "secret": "..."}',
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return refuse_url_credentials(value, "url", "put them in secret_options, which the block keeps encrypted")

    @field_validator("options")
    @classmethod
    def _plain_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        keys = secret_option_keys(value)
        if keys:
            raise ValueError(
                f"options hold credentials ({', '.join(keys)}), which Prefect would store and show in the clear: "
                "put them in secret_options, which the block keeps encrypted"
            )
        return value

    def storage_options(self) -> dict[str, Any]:
        """All fsspec options, secrets revealed: for filesystems only, never for logs or parameters."""
        secret = self.secret_options.get_secret_value() if self.secret_options else {}
        return _merge(self.options, secret or {})

    def get_filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem and the root path inside it (s3fs for s3:// URLs)."""
        return filesystem(self.url, self.storage_options())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged

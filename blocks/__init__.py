"""Prefect blocks: the model endpoint and the rollout storage, settings plus secrets that hand out clients and
filesystems. Register them with `prefect block register -m blocks`."""

from blocks.endpoint import ModelEndpoint
from blocks.resolve import (
    ResolvedEndpoint,
    ResolvedStorage,
    apply_blocks,
    endpoint_auth,
    resolve_endpoint,
    resolve_storage,
)
from blocks.storage import RolloutStorage

__all__ = [
    "ModelEndpoint",
    "RolloutStorage",
    "ResolvedEndpoint",
    "ResolvedStorage",
    "apply_blocks",
    "endpoint_auth",
    "resolve_endpoint",
    "resolve_storage",
]

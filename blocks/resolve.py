"""Resolve block names into what a run needs: endpoint settings and secrets, storage URL and filesystem options.

Block names, never their secrets, travel in flow parameters. The flow resolves the non-secret settings once
(`apply_blocks`), and each task that talks to the model loads the key itself (`endpoint_auth`), in its own process,
so the key is in no parameter, manifest, artifact or pickled task argument.
"""

from dataclasses import dataclass
from typing import Any, TypeVar

from prefect.blocks.core import Block
from pydantic import BaseModel, ValidationError

from blocks.endpoint import ModelEndpoint
from blocks.storage import RolloutStorage
from rollouts.client.credentials import EndpointAuth
from rollouts.config import DEFAULT_OUT
from rollouts.errors import ConfigError

C = TypeVar("C", bound=BaseModel)
B = TypeVar("B", bound=Block)


@dataclass(frozen=True, repr=False)
class ResolvedEndpoint:
    url: str
    model: str
    api: str
    auth: EndpointAuth
    connection_limit: int
    request_timeout: float

    def __repr__(self) -> str:
        return f"ResolvedEndpoint(url={self.url!r}, model={self.model!r}, api={self.api!r}, auth={self.auth!r})"


@dataclass(frozen=True, repr=False)
class ResolvedStorage:
    url: str
    storage_options: dict[str, Any]

    def __repr__(self) -> str:
        return f"ResolvedStorage(url={self.url!r}, options={sorted(self.storage_options)})"


def _load(block_type: type[B], kind: str, name: str) -> B:
    try:
        # prefect's async_dispatch: `_sync=True` (run the sync variant, even under a running loop) is not in load's
        # signature, and its result is typed as the block or a coroutine; with _sync=True it is the block
        return block_type.load(name, _sync=True)  # type: ignore[call-arg,return-value]
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise ConfigError(
            f"--{kind}-block {name!r}: no {block_type.get_block_type_name()} block of that name "
            f"({exc}); create it in the Prefect UI (Blocks) or with {block_type.__name__}(...).save({name!r})"
        ) from None
    except (ValidationError, RuntimeError) as exc:
        # Prefect raises a RuntimeError from the ValidationError of a stored block that no longer validates
        cause = exc if isinstance(exc, ValidationError) else exc.__cause__
        if not isinstance(cause, ValidationError):
            raise
        raise ConfigError(f"--{kind}-block {name!r}: the stored block is invalid: {cause.errors()[0]['msg']}") from None


def resolve_endpoint(name: str) -> ResolvedEndpoint:
    block: ModelEndpoint = _load(ModelEndpoint, "model", name)
    return ResolvedEndpoint(
        url=block.base_url,
        model=block.model,
        api=block.api,
        auth=block.auth(),
        connection_limit=block.connection_limit,
        request_timeout=block.request_timeout,
    )


def resolve_storage(name: str) -> ResolvedStorage:
    block: RolloutStorage = _load(RolloutStorage, "storage", name)
    return ResolvedStorage(url=block.url, storage_options=block.storage_options())


def endpoint_auth(model_block: str | None, api_key: str | None = None) -> EndpointAuth:
    """The key and headers for the model server: from the block when one is named, else the given key
    (today's `--api-key-env`). Call it inside the task that sends requests."""
    if model_block:
        return resolve_endpoint(model_block).auth
    return EndpointAuth(api_key=api_key)


def _take(current: Any, value: Any, option: str, block: str) -> Any:
    if current not in (None, value):
        raise ConfigError(f"--{option} {current!r} conflicts with the block {block!r} ({value!r}): give one of them")
    return value


def capped_concurrency(concurrency: dict[str, Any], limit: int) -> dict[str, Any]:
    """The concurrency section with the rollouts in flight capped at a model block's connection limit: a number
    `--parallel` is lowered to it; `--parallel auto` keeps adapting, below it (`--max-parallel`, `--min-parallel`)."""
    concurrency = dict(concurrency)
    if concurrency["parallel"] == "auto":
        concurrency["max_parallel"] = min(concurrency["max_parallel"], limit)
        concurrency["min_parallel"] = min(concurrency["min_parallel"], concurrency["max_parallel"])
    else:
        concurrency["parallel"] = min(int(concurrency["parallel"]), limit)
    return concurrency


def apply_blocks(config: C) -> C:
    """A copy of a CollectConfig with its blocks' non-secret settings filled in, plus the storage block's options.

    Model block (`endpoint.block`): `model_url`, `model`, `api`, `request_timeout`, and the rollouts in flight
    capped at the connection limit (`capped_concurrency`). Storage block (`storage.block`): `out` and the fsspec
    `options` (credentials included: the manifest leaves `storage.options` out, and this copy lives inside the flow
    run, after Prefect recorded its parameters). An explicit option that contradicts its block is refused by name.
    """
    model_block, storage_block = config.endpoint.block, config.storage.block  # type: ignore[attr-defined]
    if not (model_block or storage_block):
        return config
    data = config.model_dump()
    if model_block:
        endpoint = resolve_endpoint(model_block)
        section = data["endpoint"]
        section["model_url"] = _take(section.get("model_url"), endpoint.url, "model-url", model_block)
        section["model"] = _take(section.get("model"), endpoint.model, "model", model_block)
        section["api"] = endpoint.api
        section["request_timeout"] = endpoint.request_timeout
        data["concurrency"] = capped_concurrency(data["concurrency"], endpoint.connection_limit)
    if storage_block:
        storage = resolve_storage(storage_block)
        section = data["storage"]
        out = section.get("out")
        section["out"] = _take(None if out == DEFAULT_OUT else out, storage.url, "out", storage_block)
        section["options"] = {**storage.storage_options, **(section.get("options") or {})}
    return type(config).model_validate(data)

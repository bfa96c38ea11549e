"""The `collect-rollouts` flow of the command line: `collect_rollouts`, one CollectConfig (the collection itself is
flows/collection.py).

The deployments' flow, with the config's sections as parameters, is `collect_from_sections` in flows/sections.py; the
deployments' entrypoint `flows/collect.py:collect_from_sections` still gives it (`__getattr__` below), importing it
only when asked, so a `rollouts collect` run does not build that flow.
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the real annotation,
# and a string annotation leaves it "not fully defined" in a worker process that runs a deployment.
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel

from flows.collection import collect, run_name_of
from rollouts.config import CollectConfig
from rollouts.stages.outcome import RunSummary

P = ParamSpec("P")
R = TypeVar("R")


class ConfigFlow(Flow[P, R]):
    """A flow whose parameters are config models: the flow run's parameters are serialized for the API by pydantic
    itself, as FastAPI's `jsonable_encoder` (Prefect's way) would give them, without importing FastAPI and Starlette
    (~0.1-0.2 s of every `rollouts collect`)."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if parameters and all(isinstance(value, BaseModel) for value in parameters.values()):
            return {name: value.model_dump(mode="json", by_alias=True) for name, value in parameters.items()}
        return super().serialize_parameters(parameters)


def config_flow(**options: Any) -> Callable[[Callable[P, R]], ConfigFlow[P, R]]:
    """`@flow(**options)` making a ConfigFlow."""

    def make(fn: Callable[P, R]) -> ConfigFlow[P, R]:
        return ConfigFlow(fn, **options)

    return make


@config_flow(name="collect-rollouts", flow_run_name=run_name_of, log_prints=False, validate_parameters=True)
def collect_rollouts(config: CollectConfig) -> RunSummary | State[Any]:
    """Collect `num_repeats` verified rollouts per prompt and write training files for each objective."""
    return collect(config)


def __getattr__(name: str) -> Any:
    """`collect_from_sections`, the deployments' flow, from flows/sections.py when the entrypoint
    `flows/collect.py:collect_from_sections` asks for it: building its parameter schema (14 parameters, every section
    a model) cost every CLI run ~0.1 s, and only a deployment needs it."""
    if name == "collect_from_sections":
        from flows.sections import collect_from_sections

        return collect_from_sections
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

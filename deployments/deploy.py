"""Deployments of the pipeline on a process work pool: a nightly collection (cron), a collection for runs started
from the UI, a collection triggered by `rollouts.prompts.ready`, and the `prepare-prompts` flow that emits it.

    python deployments/deploy.py s3://bucket/prompts/math.jsonl --pool rollouts --model-block qwen3-8b \\
        --storage-block team-runs

The collections' parameters are CollectConfig's sections (`flows/collect.py:collect_from_sections`): a run gives
only what it changes (`--param sampling='{"num_repeats": 4}'`), merged onto these defaults field by field.
Parameters hold block names, never secrets. Only strings are templated into a trigger's parameters (the prompts
URI): checked on Prefect 3.9.1, where a single-expression template is rendered through `| tojson`.
"""

import argparse
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.events import PROMPTS_READY, RUN_COMPLETED  # noqa: E402
from rollouts.config import DEFAULT_OUT, CollectConfig  # noqa: E402
from rollouts.errors import ConfigError  # noqa: E402
from rollouts.places import absolute  # noqa: E402

COLLECT = "flows/collect.py:collect_from_sections"
PREPARE = "flows/prepare_prompts.py:prepare_prompts"
TRAIN = "flows/train_on_rollouts.py:train_on_rollouts"
NIGHTLY_CRON = "0 2 * * *"


def base_config(input: str, **options: Any) -> dict[str, Any]:
    """The `config` parameter of a deployment from flat options (`model_url=...`, `model_block=...`), nested as the
    form's sections; unset (None) options are left to their defaults."""
    return CollectConfig.nested({"input": input, **{k: v for k, v in options.items() if v is not None}})


def prompts_ready_trigger(config: dict[str, Any]):
    """Run the collection on the prompts file named by each `rollouts.prompts.ready` event: its URI replaces the
    deployment's `input`, every other parameter stays the deployment's."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="collect-when-prompts-ready",
        expect={PROMPTS_READY},
        match={"prefect.resource.id": "rollouts.prompts.*"},
        parameters={"input": "{{ event.payload.uri }}"},
    )


def run_completed_trigger():
    """Run the training flow on the RL file of each `rollouts.run.completed` event (never on `.unchanged`)."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="train-when-run-completed",
        expect={RUN_COMPLETED},
        match={"prefect.resource.id": "rollouts.run.*"},
        parameters={"rl_file": "{{ event.payload.outputs.rl[0] }}"},
    )


def prepare_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Where `prepare-prompts` writes: into the storage block's place when the collections use one (so a worker
    on another machine reads the prompts where they were written), else next to the collections' runs."""
    storage = config.get("storage") or {}
    if storage.get("block"):
        return {"storage_block": storage["block"]}
    return {"out": absolute(storage.get("out") or DEFAULT_OUT)}


def deploy_all(
    pool: str, config: dict[str, Any], *, cron: str = NIGHTLY_CRON, timezone: str = "UTC", source: str | Path = ROOT
) -> dict[str, UUID]:
    """Create or update the five deployments on `pool`; returns their ids by `flow/deployment` name."""
    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule

    collect = flow.from_source(source=str(source), entrypoint=COLLECT)
    prepare = flow.from_source(source=str(source), entrypoint=PREPARE)
    train = flow.from_source(source=str(source), entrypoint=TRAIN)
    storage_block = (config.get("storage") or {}).get("block") or ""
    common = dict(work_pool_name=pool, build=False, push=False, print_next_steps=False, ignore_warnings=True)
    ids = {
        "collect-rollouts/nightly": collect.deploy(
            name="nightly",
            schedule=CronSchedule(cron=cron, timezone=timezone),
            parameters=config,
            description=f"Nightly collection ({cron} {timezone}) of {config['input']}",
            tags=["rollouts"],
            **common,
        ),
        "collect-rollouts/from-ui": collect.deploy(
            name="from-ui",
            parameters=config,
            tags=["rollouts"],
            description="Collection started from the UI or `prefect deployment run`: edit the options in the form",
            **common,
        ),
        "collect-rollouts/on-prompts-ready": collect.deploy(
            name="on-prompts-ready",
            parameters=config,
            triggers=[prompts_ready_trigger(config)],
            description=f"Collects the prompts file of each {PROMPTS_READY} event",
            tags=["rollouts"],
            **common,
        ),
        "prepare-prompts/prepare": prepare.deploy(
            name="prepare",
            description=f"Writes a prompts JSONL and emits {PROMPTS_READY}",
            tags=["rollouts"],
            parameters=prepare_parameters(config),
            **common,
        ),
        "train-on-rollouts/on-run-completed": train.deploy(
            name="on-run-completed",
            description=f"Example trainer: reads the RL file of each {RUN_COMPLETED} event",
            tags=["rollouts"],
            parameters={"storage_block": storage_block} if storage_block else {},
            triggers=[run_completed_trigger()],
            **common,
        ),
    }
    return ids


def config_parameters(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The collections' parameters from `rollouts collect`'s own options (generated from CollectConfig): only the
    options given, nested as the form's sections, local paths made absolute (a worker does not share this shell's
    directory), checked before anything is deployed."""
    from commands.collect import config_data, validated
    from commands.options import add_model_options

    options = add_model_options(parser, CollectConfig, command="collect")
    args = parser.parse_args(argv)
    try:
        data = config_data(args, options)
        data["input"] = absolute(data["input"])
        if "out" in data.get("storage", {}):
            data["storage"]["out"] = absolute(data["storage"]["out"])
        validated(CollectConfig, data, options)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc.message}\n")
    return args, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Every option of `rollouts collect` sets that deployment default."
    )
    parser.add_argument(
        "--pool", required=True, help="a process work pool (prefect work-pool create NAME --type process)"
    )
    parser.add_argument(
        "--cron", default=NIGHTLY_CRON, help=f"schedule of the nightly collection (default {NIGHTLY_CRON!r})"
    )
    parser.add_argument("--timezone", default="UTC", help="time zone of --cron (default UTC)")
    args, config = config_parameters(parser, argv)
    for name, deployment_id in deploy_all(args.pool, config, cron=args.cron, timezone=args.timezone).items():
        print(f"{name}  {deployment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

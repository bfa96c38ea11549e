"""A run: find or create it by digest, cut its prompts into shards, and write its manifest."""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any

from pydantic import BaseModel

from rollouts.collect import RunRef, ShardRef
from rollouts.config import CollectConfig
from rollouts.envs import known_environment_names
from rollouts.errors import ConfigError, InputError
from rollouts.model import check_endpoint
from rollouts.inputs import input_digest, iter_lines, parse_prompts, prompt_line
from rollouts.progress import BOARD
from rollouts.records import SCHEMA_VERSION, dumps
from rollouts.storage import Store, join

MANIFEST = "manifest.json"


class RunPlan(BaseModel):
    run: RunRef
    shards: list[ShardRef]
    prompts: int
    rejects: int
    resumed: bool

    @property
    def rollouts_expected(self) -> int:
        return self.prompts * self.run.config.repeats


def default_run_name(input_url: str, digest: str) -> str:
    stem = posixpath.basename(input_url.rstrip("/")).split(".")[0] or "run"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:60]
    return f"{stem}-{digest[:12]}"


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def plan_run(config: CollectConfig) -> RunPlan:
    """Resolve the run directory; shard the input unless an earlier attempt already did."""
    plan = _plan(config)
    BOARD.add_total(plan.rollouts_expected)
    return plan


def _plan(config: CollectConfig) -> RunPlan:
    check_endpoint(config.model_url, config.api_key())
    in_digest = input_digest(config.input, config.storage_options)
    digest = config.digest(in_digest)
    name = config.run_name or default_run_name(config.input, digest)
    run_url = join(config.out if "://" in config.out else os.path.abspath(config.out), name)
    run = RunRef(run_id=digest, run_url=run_url, config=config)
    store = Store(run_url, config.storage_options)
    manifest = store.read_json(MANIFEST)
    if manifest is not None:
        if manifest.get("config_digest") != digest:
            changed = _differences(manifest.get("identity", {}), config.identity())
            if manifest.get("input_digest") != in_digest:
                changed.append("input file content")
            raise ConfigError(
                f"run {name!r} at {run_url} was collected with a different config or input "
                f"(changed: {', '.join(changed) or 'unknown'}). Pick another --run-name, or delete that run to start over."
            )
        if manifest.get("shards") is not None:
            shards = [ShardRef(shard=s["shard"], prompts=s["prompts"]) for s in manifest["shards"]]
            return RunPlan(run=run, shards=shards, prompts=manifest["prompts"], rejects=manifest["rejects"], resumed=True)
    shards, prompts, rejects = shard_prompts(run, store)
    write_manifest(store, run, in_digest, status="running", shards=shards, prompts=prompts, rejects=rejects)
    return RunPlan(run=run, shards=shards, prompts=prompts, rejects=rejects, resumed=False)


def shard_prompts(run: RunRef, store: Store) -> tuple[list[ShardRef], int, int]:
    config = run.config
    rejects: list[dict[str, Any]] = []
    lines = iter_lines(config.input, config.storage_options)
    prompts = parse_prompts(lines, default_env=config.env, known_envs=known_environment_names(config.remote_env),
                            start=config.start, end=config.end, limit=config.limit, on_reject=rejects.append)
    shards: list[ShardRef] = []
    batch: list[str] = []

    def cut() -> None:
        shard = f"{len(shards):05d}"
        store.write_lines(batch, "shards", f"{shard}.jsonl")
        shards.append(ShardRef(shard=shard, prompts=len(batch)))
        batch.clear()

    for prompt in prompts:
        batch.append(prompt_line(prompt))
        if len(batch) >= config.shard_size:
            cut()
    if batch:
        cut()
    store.write_lines((dumps(r) for r in rejects), "rejects.jsonl")
    total = sum(s.prompts for s in shards)
    if total == 0:
        if not rejects:
            raise InputError(f"input {config.input!r} has no prompt rows in the selected range: it is empty or --start/--end/--limit select nothing")
        raise InputError(f"input {config.input!r} has no valid prompt rows: all {len(rejects)} were rejected "
                         f"(see {store.url('rejects.jsonl')}; first error, line {rejects[0]['line']}: {rejects[0]['error']})")
    return shards, total, len(rejects)


def write_manifest(store: Store, run: RunRef, in_digest: str | None = None, **fields: Any) -> dict[str, Any]:
    """Atomic rewrite; the manifest is the last file a stage writes, so it never points at missing files."""
    current = store.read_json(MANIFEST) or {}
    config = run.config
    current.update(
        schema_version=SCHEMA_VERSION,
        run_id=run.run_id,
        run_url=run.run_url,
        config_digest=run.run_id,
        identity=config.identity(),
        config=config.model_dump(mode="json", exclude={"storage_options"}),
        updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if in_digest:
        current["input_digest"] = in_digest
    for key, value in fields.items():
        if key == "shards":
            value = [s.model_dump() for s in value]
        current[key] = value
    store.write_json(current, MANIFEST)
    return current


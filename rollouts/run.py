"""A run and its files: the references tasks pass around (RunRef, ShardRef, ShardResult), its store and its manifest.

The run layout and what each stage reads and writes are in docs/architecture.md. Tasks pass these small references,
never rows: a RunRef carries the config and the run's URL, from which every stage opens the run's store.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from rollouts.config import CollectConfig
from rollouts.records import SCHEMA_VERSION, loads
from rollouts.redact import redacted_dump
from rollouts.storage import Store

MANIFEST = "manifest.json"


class RunRef(BaseModel):
    """What a shard task needs to find its run: small, so Prefect passes it cheaply."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    run_url: str
    config: CollectConfig


class ShardRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    shard: str
    prompts: int


class ShardResult(BaseModel):
    """A shard's counts after a stage: verified rollouts, failures and the sum of their rewards."""

    shard: str
    rollouts: int = 0
    failed: int = 0
    reward_sum: float = 0.0


class RunPlan(BaseModel):
    run: RunRef
    shards: list[ShardRef]
    prompts: int
    rejects: int
    resumed: bool
    earlier_rollouts: int = 0  # rollouts verified by earlier attempts of the run, before this one started

    @property
    def rollouts_expected(self) -> int:
        return self.prompts * self.run.config.repeats


def run_store(run: RunRef) -> Store:
    return Store(run.run_url, run.config.storage.options)


def read_records(store: Store, *parts: str) -> Iterator[dict[str, Any]]:
    for line in store.iter_lines(*parts):
        try:
            yield loads(line)
        except ValueError:
            continue  # a torn line from a crash: the rollout is simply redone


def default_run_name(input_url: str, digest: str) -> str:
    stem = posixpath.basename(input_url.rstrip("/")).split(".")[0] or "run"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:60]
    return f"{stem}-{digest[:12]}"


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
        config=redacted_dump(config, exclude={"storage": {"options"}}),
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


def stored_results(plan: RunPlan) -> list[ShardResult]:
    """Each shard's counts as its files hold them: what a stopped run really verified (a shard task stopped
    mid-way returns no counts, but the rollouts it flushed are stored and kept by a resume)."""
    store = run_store(plan.run)
    results = []
    for shard in plan.shards:
        rewards = [float(r.get("reward") or 0.0) for r in read_records(store, "rollouts", f"{shard.shard}.jsonl")]
        failed = sum(1 for _ in read_records(store, "failures", f"{shard.shard}.jsonl"))
        results.append(ShardResult(shard=shard.shard, rollouts=len(rewards), failed=failed, reward_sum=sum(rewards)))
    return results

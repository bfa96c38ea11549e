"""Shard stage: find or create the run by its digest, cut its prompts into shards, write the first manifest."""

from __future__ import annotations

import os
from typing import Any

from rollouts.batch.api import check_batch_api
from rollouts.client.credentials import EndpointAuth
from rollouts.client.model import check_endpoint, probe_token_source
from rollouts.collector.breaker import STOPPED
from rollouts.config import CollectConfig
from rollouts.envs.preflight import check_environments
from rollouts.errors import ConfigError, InputError
from rollouts.inputs import input_digest, iter_lines, parse_prompts, prompt_line
from rollouts.lock import RunLocks
from rollouts.places import absolute, is_url
from rollouts.records import dumps
from rollouts.run import MANIFEST, RunPlan, RunRef, ShardRef, default_run_name, stored_results, write_manifest
from rollouts.storage import Store, check_place, join


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_input(config: CollectConfig) -> None:
    """The input exists, is readable and has at least one non-blank line (an InputError otherwise)."""
    for _ in iter_lines(config.input, config.storage.options):
        return
    raise InputError(f"input {config.input!r} is empty: it has no rows")


def check_output(config: CollectConfig) -> None:
    """The output place can be reached and written under (`storage.check_place`)."""
    check_place(absolute(config.storage.out), config.storage.options)


def locate_run(config: CollectConfig) -> tuple[RunRef, Store, dict[str, Any] | None, str]:
    """The run this config and input make (by digest), its store and manifest if it exists; a ConfigError when the
    run name is taken by a run of another config or input."""
    options = config.storage.options
    in_digest = input_digest(config.input, options)
    digest = config.digest(in_digest)
    name = config.run_name or default_run_name(config.input, digest)
    out = config.storage.out
    run_url = join(out if is_url(out) else os.path.abspath(out), name)
    run = RunRef(run_id=digest, run_url=run_url, config=config)
    store = Store(run_url, options)
    manifest = store.read_json(MANIFEST)
    if manifest is not None and manifest.get("config_digest") != digest:
        changed = _differences(manifest.get("identity", {}), config.identity())
        if manifest.get("input_digest") != in_digest:
            changed.append("input file content")
        raise ConfigError(
            f"run {name!r} at {run_url} was collected with a different config or input "
            f"(changed: {', '.join(changed) or 'unknown'}). Pick another --run-name, or delete that run to start over."
        )
    return run, store, manifest, in_digest


def check_server(config: CollectConfig, auth: EndpointAuth) -> None:
    """The model server answers, serves --model (unless --no-model-check), and with --batch has the Batch API."""
    endpoint = config.endpoint
    check_endpoint(endpoint.base_url, auth, model=endpoint.model_name if endpoint.check_model else None)
    if config.batch.enabled:
        check_batch_api(endpoint.base_url, auth.request_headers())


def preflight(config: CollectConfig, auth: EndpointAuth | None = None) -> tuple[RunRef, Store, dict[str, Any] | None]:
    """What can be checked before a flow starts, fastest first: the input, the endpoint (with --batch, that it has
    the Batch API; with --return-tokens, that it gives token ids), the remote environments, the run name. Returns
    the run, its store and its manifest if an earlier attempt wrote one. `config` may hold a storage block's
    credentials: refuse the user's own (`refuse_secrets`) before the blocks are applied."""
    check_input(config)
    check_output(config)
    auth = auth or EndpointAuth(api_key=config.api_key())
    endpoint = config.endpoint
    check_server(config, auth)
    if endpoint.return_tokens:  # one tiny request: no exact token ids fails here, not in every rollout
        timeout = min(endpoint.request_timeout, 120.0)
        probe_token_source(endpoint.base_url, endpoint.model_name, endpoint.api, endpoint.token_source, auth, timeout)
    check_environments(config.environments.remote_env)
    run, store, manifest, _ = locate_run(config)
    return run, store, manifest


def plan_run(config: CollectConfig, auth: EndpointAuth | None = None, locks: RunLocks | None = None) -> RunPlan:
    """Resolve the run directory; take its lock in `locks` (released by the caller when the run ends, here when
    planning fails); shard the input unless an earlier attempt already did. A storage block's credentials may be in
    `config.storage.options` here (the manifest leaves those out); the flow refuses credentials the user put in the
    parameters before it resolves the blocks."""
    check_server(config, auth or EndpointAuth(api_key=config.api_key()))
    check_environments(config.environments.remote_env)
    run, store, manifest, in_digest = locate_run(config)
    if locks is None:
        return _plan(run, store, manifest, in_digest)
    locks.take(store)  # before the first write: a second command on this run stops here, naming the holder
    try:
        # Read again under the lock: the manifest seen before it may be another command's, since rewritten.
        return _plan(run, store, store.read_json(MANIFEST), in_digest)
    except BaseException:
        locks.release(store)
        raise


def _plan(run: RunRef, store: Store, manifest: dict[str, Any] | None, in_digest: str) -> RunPlan:
    store.remove(STOPPED)  # an earlier attempt stopped early: this one tries again (the user changed something)
    if manifest is not None and manifest.get("shards") is not None:
        shards = [ShardRef(shard=s["shard"], prompts=s["prompts"]) for s in manifest["shards"]]
        plan = RunPlan(run=run, shards=shards, prompts=manifest["prompts"], rejects=manifest["rejects"], resumed=True)
        return plan.model_copy(update={"earlier_rollouts": sum(r.rollouts for r in stored_results(plan))})
    shards, prompts, rejects = shard_prompts(run, store)
    write_manifest(store, run, in_digest, status="running", shards=shards, prompts=prompts, rejects=rejects)
    return RunPlan(run=run, shards=shards, prompts=prompts, rejects=rejects, resumed=False)


def shard_prompts(run: RunRef, store: Store) -> tuple[list[ShardRef], int, int]:
    config = run.config
    rows = config.rows
    rejects: list[dict[str, Any]] = []
    lines = iter_lines(config.input, config.storage.options)
    prompts = parse_prompts(
        lines,
        default_env=config.environments.env,
        known_envs=config.environments.build(),
        start=rows.start,
        end=rows.end,
        limit=rows.limit,
        on_reject=rejects.append,
    )
    shards: list[ShardRef] = []
    batch: list[str] = []

    def cut() -> None:
        shard = f"{len(shards):05d}"
        store.write_lines(batch, "shards", f"{shard}.jsonl")
        shards.append(ShardRef(shard=shard, prompts=len(batch)))
        batch.clear()

    for prompt in prompts:
        batch.append(prompt_line(prompt))
        if len(batch) >= config.concurrency.shard_size:
            cut()
    if batch:
        cut()
    store.write_lines((dumps(r) for r in rejects), "rejects.jsonl")
    total = sum(s.prompts for s in shards)
    if total == 0:
        if not rejects:
            raise InputError(
                f"input {config.input!r} has no prompt rows in the selected range: "
                "it is empty or --start/--end/--limit select nothing"
            )
        raise InputError(
            f"input {config.input!r} has no valid prompt rows: all {len(rejects)} were rejected "
            f"(see {store.url('rejects.jsonl')}; first error, line {rejects[0]['line']}: {rejects[0]['error']})"
        )
    return shards, total, len(rejects)

"""The end of a run: counts, the failure-fraction verdict, and the final manifest."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rollouts.collect import ShardResult, run_store
from rollouts.run import RunPlan, write_manifest
from rollouts.storage import inventory

# Committed outputs listed in the final manifest with size and sha256; shards/ and generations/ are working files.
INVENTORY_FOLDERS = ("rollouts", "failures", "profile", "train")
INVENTORY_FILES = ("rejects.jsonl",)


class RunSummary(BaseModel):
    run_url: str
    status: str  # completed | failed
    reason: str = ""
    prompts: int
    rejects: int
    rollouts_expected: int
    rollouts_ok: int
    rollouts_failed: int
    rollouts_not_run: int = 0  # rollouts of shards whose task never finished: not attempted, so not failures
    failure_fraction: float
    mean_reward: float | None
    rollouts_per_s: float | None
    output_tokens_per_s: float | None
    outputs: dict[str, list[str]]
    incomplete_shards: list[str]


def finish_run(plan: RunPlan, results: list[ShardResult], incomplete: list[str], profile: dict[str, Any],
               outputs: dict[str, list[str]]) -> RunSummary:
    config = plan.run.config
    ok = sum(r.rollouts for r in results)
    failed = sum(r.failed for r in results)
    expected = plan.rollouts_expected
    # Rollouts of shards whose tasks never finished were not attempted: they are counted as not run (never dropped
    # silently, never passed off as failed rollouts), and the run cannot complete until a resume runs them.
    not_run = max(expected - ok - failed, 0)
    fraction = failed / expected if expected else 0.0
    reason = ""
    if incomplete or not_run:
        reason = (f"{not_run} of {expected} rollouts not run: {len(incomplete)} shard task(s) did not finish "
                  f"({', '.join(incomplete[:5])}); run the same command again to resume")
    elif fraction > config.max_failure_fraction:
        reason = (f"{failed} of {expected} rollouts failed ({fraction:.1%}), above --max-failure-fraction "
                  f"{config.max_failure_fraction:.1%}; see {plan.run.run_url}/failures/ and run again to retry them")
    status = "failed" if reason else "completed"
    reward_sum = sum(r.reward_sum for r in results)
    summary = RunSummary(
        run_url=plan.run.run_url, status=status, reason=reason, prompts=plan.prompts, rejects=plan.rejects,
        rollouts_expected=expected, rollouts_ok=ok, rollouts_failed=failed, rollouts_not_run=not_run,
        failure_fraction=round(fraction, 6),
        mean_reward=round(reward_sum / ok, 6) if ok else None, rollouts_per_s=profile.get("rollouts_per_s"),
        output_tokens_per_s=profile.get("output_tokens_per_s"), outputs=outputs, incomplete_shards=incomplete,
    )
    store = run_store(plan.run)
    # Written last: a reader that finds status "completed" finds every listed file whole (check_inventory).
    write_manifest(store, plan.run, status=status, reason=reason, counts=summary.model_dump(
        include={"prompts", "rejects", "rollouts_expected", "rollouts_ok", "rollouts_failed", "rollouts_not_run",
                 "failure_fraction", "mean_reward"}),
        shard_status=[{"shard": r.shard, "rollouts": r.rollouts, "failed": r.failed} for r in results]
        + [{"shard": s, "status": "incomplete"} for s in incomplete],
        profile={k: profile.get(k) for k in ("rollouts_per_s", "output_tokens_per_s", "generation_window_s")},
        outputs=outputs, files=inventory(store, INVENTORY_FOLDERS, INVENTORY_FILES))
    return summary

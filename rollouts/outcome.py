"""The end of a run: counts, the failure-fraction verdict, and the final manifest."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rollouts.failures import FailureCounts, failure_counts
from rollouts.interrupt import RESUME_HINT
from rollouts.run import RunPlan, ShardResult, read_records, run_store, write_manifest


class RunSummary(BaseModel):
    run_url: str
    status: str  # completed | failed | interrupted
    reason: str = ""
    prompts: int
    rejects: int
    rollouts_expected: int
    rollouts_ok: int
    rollouts_failed: int
    failure_fraction: float
    mean_reward: float | None
    rollouts_per_s: float | None
    output_tokens_per_s: float | None
    outputs: dict[str, list[str]]
    incomplete_shards: list[str]


def run_failure_counts(plan: RunPlan, missing: int = 0) -> FailureCounts:
    """Retryable and permanent failures over the run's failure rows (plus `missing` rollouts, retryable)."""
    store = run_store(plan.run)
    rows = (row for shard in plan.shards for row in read_records(store, "failures", f"{shard.shard}.jsonl"))
    return failure_counts(rows, missing)


def finish_run(plan: RunPlan, results: list[ShardResult], incomplete: list[str], profile: dict[str, Any],
               outputs: dict[str, list[str]], *, interrupted: str = "") -> RunSummary:
    """`interrupted` is the stop's reason when the run was stopped (`StopSignal.reason`): the status is then
    `interrupted` and the reason says how to resume."""
    config = plan.run.config
    ok = sum(r.rollouts for r in results)
    failed = sum(r.failed for r in results)
    expected = plan.rollouts_expected
    # Rollouts of shards whose tasks crashed count as failed: they are missing, not silently dropped.
    missing = max(expected - ok - failed, 0)
    fraction = (failed + missing) / expected if expected else 0.0
    reason = ""
    if interrupted:
        reason = f"{interrupted} with {ok} of {expected} rollouts verified; {RESUME_HINT}"
    elif incomplete:
        reason = f"{len(incomplete)} shard task(s) did not finish ({', '.join(incomplete[:5])}); run the same command again to resume"
    elif fraction > config.max_failure_fraction:
        counts = run_failure_counts(plan, missing)
        reason = (f"{failed + missing} of {expected} rollouts failed ({fraction:.1%}), above --max-failure-fraction "
                  f"{config.max_failure_fraction:.1%}: {counts.describe()}; see {plan.run.run_url}/failures/")
    status = "interrupted" if interrupted else "failed" if reason else "completed"
    reward_sum = sum(r.reward_sum for r in results)
    summary = RunSummary(
        run_url=plan.run.run_url, status=status, reason=reason, prompts=plan.prompts, rejects=plan.rejects,
        rollouts_expected=expected, rollouts_ok=ok, rollouts_failed=failed + missing, failure_fraction=round(fraction, 6),
        mean_reward=round(reward_sum / ok, 6) if ok else None, rollouts_per_s=profile.get("rollouts_per_s"),
        output_tokens_per_s=profile.get("output_tokens_per_s"), outputs=outputs, incomplete_shards=incomplete,
    )
    write_manifest(run_store(plan.run), plan.run, status=status, reason=reason, counts=summary.model_dump(
        include={"prompts", "rejects", "rollouts_expected", "rollouts_ok", "rollouts_failed", "failure_fraction", "mean_reward"}),
        shard_status=[{"shard": r.shard, "rollouts": r.rollouts, "failed": r.failed} for r in results]
        + [{"shard": s, "status": "incomplete"} for s in incomplete],
        profile={k: profile.get(k) for k in ("rollouts_per_s", "output_tokens_per_s", "generation_window_s")},
        outputs=outputs)
    return summary

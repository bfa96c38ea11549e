"""The end of a run: counts, the verdict, the top failure types, and the final manifest with its file inventory."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

from rollouts.collector.breaker import STOPPED
from rollouts.collector.interrupt import RESUME_HINT
from rollouts.run import RunPlan, ShardResult, read_records, run_store, write_manifest
from rollouts.stages.failures import FailureCounts, failure_counts
from rollouts.storage import inventory

# Committed outputs listed in the final manifest with size and sha256; shards/ and generations/ are working files.
INVENTORY_FOLDERS = ("rollouts", "failures", "profile", "train")
INVENTORY_FILES = ("rejects.jsonl",)


class Verdict(BaseModel):
    status: str  # completed | failed | interrupted
    reason: str = ""
    rollouts_ok: int
    rollouts_failed: int
    rollouts_not_run: int = 0  # rollouts of shards whose task never finished: not attempted, so not failures
    failure_fraction: float
    mean_reward: float | None


class RunSummary(BaseModel):
    run_url: str
    status: str  # completed | failed
    reason: str = ""
    prompts: int
    rejects: int
    rollouts_expected: int
    rollouts_ok: int
    rollouts_failed: int
    rollouts_not_run: int = 0
    failure_fraction: float
    mean_reward: float | None
    rollouts_per_s: float | None
    output_tokens_per_s: float | None
    outputs: dict[str, list[str]]
    incomplete_shards: list[str]
    top_failures: list[dict[str, Any]] = []  # {type, status_code, count, example}, most frequent first
    token_contiguity: str | None = None  # with --return-tokens: rollouts contiguous, breaks by class
    resumed: bool = False  # an earlier attempt of the same run (same config and input) had started it
    new_rollouts: int = 0  # rollouts verified by this attempt: 0 when a resumed run found everything done
    # unhealthy rollouts over the checked ones (rollouts/quality); None when the health checks did not run
    unhealthy_fraction: float | None = None


def run_failure_counts(plan: RunPlan, missing: int = 0) -> FailureCounts:
    """Retryable and permanent failures over the run's failure rows (plus `missing` rollouts, retryable)."""
    store = run_store(plan.run)
    rows = (row for shard in plan.shards for row in read_records(store, "failures", f"{shard.shard}.jsonl"))
    return failure_counts(rows, missing)


def rollouts_on_disk(plan: RunPlan) -> int:
    """Verified rollouts of the run in storage (committed lines and flushed parts alike)."""
    store = run_store(plan.run)
    return sum(1 for shard in plan.shards for _ in store.iter_lines("rollouts", f"{shard.shard}.jsonl"))


def judge(plan: RunPlan, results: list[ShardResult], incomplete: list[str], *, interrupted: str = "") -> Verdict:
    """Decide the run's state from its shards' counts, before any training file is written. `interrupted` is the
    stop's reason when the run was stopped (`StopSignal.reason`): the status is then `interrupted`."""
    config = plan.run.config
    ok = counted = sum(r.rollouts for r in results)
    failed = sum(r.failed for r in results)
    expected = plan.rollouts_expected
    # Rollouts of shards whose tasks never finished, or that a stopped run never started, were not attempted: they
    # are counted as not run (never dropped silently, never passed off as failed rollouts).
    not_run = max(expected - ok - failed, 0)
    fraction = failed / expected if expected else 0.0
    reason = ""
    stopped = run_store(plan.run).read_json(STOPPED)
    if interrupted:
        # Stopped shards report no counts (they end with Interrupted): what they flushed is on disk all the same.
        ok = max(ok, rollouts_on_disk(plan))
        not_run = max(expected - ok - failed, 0)
        reason = f"{interrupted} with {ok} of {expected} rollouts verified; {RESUME_HINT}"
    elif stopped:
        reason = stopped["reason"]
    elif incomplete or not_run:
        reason = (
            f"{not_run} of {expected} rollouts not run: {len(incomplete)} shard task(s) did not finish "
            f"({', '.join(incomplete[:5])}); run the same command again to resume"
        )
    elif fraction > config.max_failure_fraction:
        counts = run_failure_counts(plan)
        reason = (
            f"{failed} of {expected} rollouts failed ({fraction:.1%}), above --max-failure-fraction "
            f"{config.max_failure_fraction:.1%}: {counts.describe()}; see {plan.run.run_url}/failures/"
        )
    reward_sum = sum(r.reward_sum for r in results)
    status = "interrupted" if interrupted else "failed" if reason else "completed"
    return Verdict(
        status=status,
        reason=reason,
        rollouts_ok=ok,
        rollouts_failed=failed,
        rollouts_not_run=not_run,
        failure_fraction=round(fraction, 6),
        mean_reward=round(reward_sum / counted, 6) if counted else None,
    )


def reward_text(mean_reward: float | None) -> str:
    """A mean reward for a message: a number, or what it means that there is none."""
    return f"mean reward {mean_reward:.3f}" if mean_reward is not None else "no verified rollout to average"


def top_failures(plan: RunPlan, results: list[ShardResult], limit: int = 5) -> list[dict[str, Any]]:
    """The most frequent failure types of the run (type and status code), each with one example message."""
    store = run_store(plan.run)
    counts: Counter[tuple[str, int | None]] = Counter()
    examples: dict[tuple[str, int | None], str] = {}
    for result in results:
        if not result.failed:
            continue
        for row in read_records(store, "failures", f"{result.shard}.jsonl"):
            error = row.get("error") or {}
            key = (str(error.get("type") or "unknown"), error.get("status_code"))
            counts[key] += 1
            examples.setdefault(key, str(error.get("message") or "")[:200])
    return [
        {"type": t, "status_code": code, "count": n, "example": examples[(t, code)]}
        for (t, code), n in counts.most_common(limit)
    ]


def finish_run(
    plan: RunPlan,
    verdict: Verdict,
    results: list[ShardResult],
    incomplete: list[str],
    profile: dict[str, Any],
    outputs: dict[str, list[str]],
) -> RunSummary:
    summary = RunSummary(
        run_url=plan.run.run_url,
        status=verdict.status,
        reason=verdict.reason,
        prompts=plan.prompts,
        rejects=plan.rejects,
        rollouts_expected=plan.rollouts_expected,
        rollouts_ok=verdict.rollouts_ok,
        rollouts_failed=verdict.rollouts_failed,
        rollouts_not_run=verdict.rollouts_not_run,
        failure_fraction=verdict.failure_fraction,
        mean_reward=verdict.mean_reward,
        rollouts_per_s=profile.get("rollouts_per_s"),
        output_tokens_per_s=profile.get("output_tokens_per_s"),
        outputs=outputs,
        incomplete_shards=incomplete,
        top_failures=top_failures(plan, results),
        token_contiguity=(profile.get("contiguity") or {}).get("summary"),
        resumed=plan.resumed,
        new_rollouts=max(verdict.rollouts_ok - plan.earlier_rollouts, 0),
        unhealthy_fraction=(profile.get("health") or {}).get("unhealthy_fraction"),
    )
    store = run_store(plan.run)
    store.remove_leftovers("profile", "train")  # an earlier attempt killed mid-write: not part of the run
    # Written last: a reader that finds status "completed" finds every listed file whole (check_inventory).
    write_manifest(
        store,
        plan.run,
        status=summary.status,
        reason=summary.reason,
        counts=summary.model_dump(
            include={
                "prompts",
                "rejects",
                "rollouts_expected",
                "rollouts_ok",
                "rollouts_failed",
                "rollouts_not_run",
                "failure_fraction",
                "mean_reward",
            }
        ),
        shard_status=[{"shard": r.shard, "rollouts": r.rollouts, "failed": r.failed} for r in results]
        + [{"shard": s, "status": "incomplete"} for s in incomplete],
        profile={k: profile.get(k) for k in ("rollouts_per_s", "output_tokens_per_s", "generation_window_s")},
        top_failures=summary.top_failures,
        outputs=outputs,
        files=inventory(store, INVENTORY_FOLDERS, INVENTORY_FILES),
    )
    return summary

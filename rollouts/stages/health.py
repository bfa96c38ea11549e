"""Health stage: run the rollout health checks over a collected run (rollouts/quality), before its profile.

It writes `<run>/quality/verdicts.jsonl` and `summary.json` (the profile stage puts the summary's section in the run
report), and says whether the run is too unhealthy to complete (`--max-unhealthy-fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollouts.quality import check_path, check_table, markdown_section, write_quality
from rollouts.run import RunRef


@dataclass(frozen=True)
class Health:
    """What the flow needs of a run's health: the fraction, the top checks, the reason to fail if too unhealthy."""

    unhealthy_fraction: float
    checked: int
    top_checks: list[tuple[str, int]] = field(default_factory=list)
    markdown: str = ""  # the run report's section: tables per check and environment, the worst rollouts linked
    table: list[dict[str, Any]] = field(default_factory=list)  # the per-check table, as rows
    too_unhealthy: str = ""  # the reason the run fails, when it passes --max-unhealthy-fraction

    def as_payload(self) -> dict[str, Any]:
        return {"unhealthy_fraction": round(self.unhealthy_fraction, 6), "checked": self.checked}


def check_health(run: RunRef) -> Health:
    """Check every verified rollout of the run and write the quality files."""
    config = run.config.quality
    options = run.config.storage.options
    result = check_path(run.run_url, config, storage_options=options)
    summary = result.summary()
    write_quality(result, run.run_url, storage_options=options, summary=summary)
    top = result.top_checks(3)
    reason = ""
    limit = config.max_unhealthy_fraction
    if limit is not None and result.checked and result.unhealthy_fraction > limit:
        named = ", ".join(f"{check} {count}" for check, count in top)
        reason = (
            f"{result.unhealthy_fraction:.1%} of the checked rollouts are unhealthy, over "
            f"--max-unhealthy-fraction {limit:g} (top checks: {named}); see {run.run_url}/quality/summary.json"
        )
    return Health(
        result.unhealthy_fraction, result.checked, top, markdown_section(summary), check_table(summary), reason
    )

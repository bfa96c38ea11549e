"""Custom events of the pipeline: `rollouts.prompts.ready` (a prompts file to collect) and `rollouts.run.completed`
/ `rollouts.run.failed` (a collection ended), for deployment triggers to chain prepare -> collect -> train.

A completed run that added nothing (it resumed a run that was already whole: the same config over the same input)
emits `rollouts.run.unchanged` instead of `completed`, so a training flow triggered by `completed` never retrains on
the same data. Every run event carries `new_rollouts` (verified by this attempt) and `resumed`.

Payload values are strings or numbers only; a trigger templates just the strings it needs (a URI) into parameters,
because several Prefect 3.x releases deliver templated non-strings as strings.
"""

import posixpath
from typing import Any

from prefect.events import Event, emit_event

PROMPTS_READY = "rollouts.prompts.ready"
RUN_COMPLETED = "rollouts.run.completed"
RUN_FAILED = "rollouts.run.failed"
RUN_UNCHANGED = "rollouts.run.unchanged"
_COUNTS = (
    "prompts",
    "rejects",
    "rollouts_expected",
    "rollouts_ok",
    "rollouts_failed",
    "rollouts_not_run",
    "failure_fraction",
    "mean_reward",
    "rollouts_per_s",
    "new_rollouts",
    "resumed",
    "unhealthy_fraction",
)


def _name(url: str) -> str:
    return posixpath.basename(url.rstrip("/")) or url


def emit_prompts_ready(uri: str, rows: int, dataset: str) -> Event | None:
    """A prompts JSONL is ready at `uri` (any fsspec URL the collection's workers can read)."""
    return emit_event(
        PROMPTS_READY,
        resource={"prefect.resource.id": f"rollouts.prompts.{dataset}", "prefect.resource.name": dataset},
        payload={"uri": uri, "rows": rows, "dataset": dataset},
    )


def emit_run_event(summary: Any) -> Event | None:
    """`rollouts.run.completed`, `.unchanged` or `.failed` for a RunSummary (or its dict): the run URL, counts,
    mean reward and the training files, related to the flow run that emitted it. Call it once, as the flow's last
    step."""
    data = summary.model_dump() if hasattr(summary, "model_dump") else dict(summary)
    run_url = data["run_url"]
    payload: dict[str, Any] = {"run_url": run_url, "status": data["status"], "reason": data.get("reason") or ""}
    payload.update({key: data[key] for key in _COUNTS if data.get(key) is not None})
    payload["outputs"] = {objective: list(files) for objective, files in (data.get("outputs") or {}).items()}
    event = RUN_FAILED
    if data["status"] == "completed":
        event = RUN_UNCHANGED if data.get("resumed") and not data.get("new_rollouts") else RUN_COMPLETED
    return emit_event(
        event,
        resource={
            "prefect.resource.id": f"rollouts.run.{_name(run_url)}",
            "prefect.resource.name": _name(run_url),
            "rollouts.run-url": run_url,
        },
        payload=payload,
    )

"""The check-health stage in real flow runs: rollouts answered with reasoning only (a token limit that cuts the answer
off) are found unhealthy; the quality files, the run report's section, the Prefect artifacts (a table, the worst
rollouts linked to their rows) and the run event's unhealthy_fraction; --max-unhealthy-fraction fails the run naming
the top checks, and --drop-unhealthy leaves the flagged rollouts out of every objective's training files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client

from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from rollouts.errors import RunFailedError
from rollouts.quality import UnknownCheckError
from tests.integration.conftest import math_rows, read_jsonl, run_rows, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server", "board")]
CUT = 16  # output tokens: the simulated model's reasoning alone is longer, so its answer text is empty


def prompts(tmp_path: Path, *, cut: int) -> Path:
    """Six prompts, the first `cut` of them with a token limit in their own parameters."""
    rows = math_rows(6)
    for row in rows[:cut]:
        row["responses_create_params"]["max_output_tokens"] = CUT
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def config(tmp_path: Path, src: Path, url: str, name: str, **overrides: Any) -> CollectConfig:
    fields: dict[str, Any] = dict(
        input=str(src), out=str(tmp_path / "runs"), model_url=url, model="sim-model", num_repeats=2, parallel=8,
        shard_size=6, temperature=0.7, seed=5, run_name=name,
    )  # fmt: skip
    return CollectConfig(**(fields | overrides))


def run_event(name: str, flow_run_id: Any, timeout_s: float = 30) -> dict[str, Any]:
    """The run event the flow run emitted; the server stores events in batches, so it is polled for."""
    related = f"prefect.flow-run.{flow_run_id}"
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            found = client.request("POST", "/events/filter", json={"filter": {"event": {"name": [name]}}}).json()
            mine = [e for e in found["events"] if any(r["prefect.resource.id"] == related for r in e["related"])]
            if mine or time.monotonic() > deadline:
                assert len(mine) == 1, f"{len(mine)} {name} events for flow run {flow_run_id}"
                return dict(mine[0])
            time.sleep(0.5)


def test_an_unhealthy_run_fails_over_the_fraction_with_its_checks_named(tmp_path: Path, sim) -> None:
    src = prompts(tmp_path, cut=6)
    state = collect_rollouts(
        config(tmp_path, src, sim.url, "sick", max_unhealthy_fraction=0.5, objective="sft"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(RunFailedError, match=r"100\.0% of the checked rollouts are unhealthy, over "):
        state.result()
    run = tmp_path / "runs" / "sick"
    summary = json.loads((run / "quality" / "summary.json").read_text())
    assert summary["checked"] == 12 and summary["checks"]["empty_completion"]["fired"] == 12
    verdicts = read_jsonl(run / "quality" / "verdicts.jsonl")
    assert {v["rollout_id"] for v in verdicts} == {r["rollout_id"] for r in run_rows(run, "rollouts")}
    assert {v["verdict"] for v in verdicts} == {"unhealthy"}
    assert not (run / "sft").exists() and not (run / "train").exists()  # no training files from a failed run
    event = run_event("rollouts.run.failed", state.state_details.flow_run_id)
    assert event["payload"]["unhealthy_fraction"] == 1.0
    assert "(top checks: empty_completion 12" in event["payload"]["reason"]


def test_health_is_reported_published_and_acted_on(tmp_path: Path, sim) -> None:
    src = prompts(tmp_path, cut=2)
    cfg = config(
        tmp_path, src, sim.url, "mixed", objective="rl,sft,dpo", drop_unhealthy=["empty_completion"],
        skip_checks=["identical_group"],  # two samples of one prompt may well agree
    )  # fmt: skip
    state = collect_rollouts(cfg, return_state=True)
    summary = state.result()
    run = Path(summary.run_url)
    assert summary.status == "completed" and summary.unhealthy_fraction == pytest.approx(4 / 12, abs=1e-6)
    event = run_event("rollouts.run.completed", state.state_details.flow_run_id)
    assert event["payload"]["unhealthy_fraction"] == pytest.approx(4 / 12, abs=1e-6)

    health = json.loads((run / "quality" / "summary.json").read_text())
    assert health["checks"]["empty_completion"]["fired"] == 4 and health["verdicts"]["unhealthy"] == 4
    report = (run / "profile" / "report.md").read_text()
    assert "## Rollout health" in report and "12 rollouts checked: **4 unhealthy (33.33%)**" in report

    table = Artifact.get("rollout-health-checks")
    assert table is not None
    rows = {row["check"]: row for row in json.loads(table.data)}
    assert rows["empty_completion"]["fired"] == 4 and rows["empty_completion"]["share"] == "33.33%"
    assert rows["empty_completion"]["example"].startswith("the final turn has only reasoning")
    markdown = Artifact.get("rollout-health")
    assert markdown is not None and "### Worst rollouts" in markdown.data
    worst = [line for line in markdown.data.splitlines() if "](file://" in line]
    assert len(worst) == 4
    for line in worst:  # each links to its row: the shard's file and the line of that rollout in it
        link = line.rsplit("](", 1)[1].rstrip(" |)")
        file, anchor = link.removeprefix("file://").split("#L")
        row = json.loads(Path(file).read_text().splitlines()[int(anchor) - 1])
        assert f"`{row['rollout_id']}`" in line and row["responses_create_params"]["max_output_tokens"] == CUT

    for objective in ("rl", "sft", "dpo"):
        card = json.loads((run / "train" / objective / "data_card.json").read_text())
        assert card["dropped"][0] == {
            "rule": "unhealthy",
            "count": 4,
            "why": "the rollout health checks found it unhealthy (empty_completion; see quality/verdicts.jsonl)",
        }, objective


def test_unknown_check_ids_fail_the_flow_before_anything_is_collected(tmp_path: Path, sim) -> None:
    """A deployment's parameters are not checked by the command line: the flow refuses them before collecting."""
    src = prompts(tmp_path, cut=0)
    state = collect_rollouts(config(tmp_path, src, sim.url, "typo", drop_unhealthy=["runaway"]), return_state=True)
    assert state.is_failed()
    with pytest.raises(UnknownCheckError, match=r"^--drop-unhealthy: unknown check 'runaway' \(known: empty_"):
        state.result()
    assert not (tmp_path / "runs" / "typo").exists()

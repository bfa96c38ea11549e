"""Deployments on a real `prefect server start` with a process worker: the cron schedule, a parameterised run,
and the chain prepare-prompts -> rollouts.prompts.ready -> collection -> rollouts.run.completed."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deployments.deploy import NIGHTLY_CRON, base_config, deploy_all
from tests.integration.conftest import math_rows, run_rows, write_jsonl

pytestmark = pytest.mark.integration
POOL = "rollouts-test"


@pytest.fixture(scope="module")
def deployed(live_prefect, sim, tmp_path_factory):
    from prefect.settings import temporary_settings

    from tests.integration.live_server import process_worker

    work = tmp_path_factory.mktemp("deployed")
    prompts = write_jsonl(work / "prompts.jsonl", math_rows(4))
    config = base_config(
        str(prompts),
        model_url=sim.url,
        model="sim-model",
        out=str(work / "runs"),
        num_repeats=2,
        temperature=0.0,
        seed=7,
    )
    with temporary_settings(updates={"api.url": live_prefect.api_url}), process_worker(live_prefect, POOL) as log:
        ids = deploy_all(POOL, config)
        yield {"ids": ids, "work": work, "config": config, "worker_log": log}


def _wait_state(client, flow_run_id, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s} s (state {run.state})")


def _events(client, name: str, related_id: str, timeout_s: float = 30) -> list[dict]:
    """Events of `name` related to a resource; the server persists events in batches, so poll a little."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = client.request("POST", "/events/filter", json={"filter": {"event": {"name": [name]}}}).json()["events"]
        found = [e for e in found if any(r["prefect.resource.id"] == related_id for r in e.get("related", []))]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_nightly_schedule_is_registered_with_its_next_runs(deployed, live_client):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployed["ids"]["collect-rollouts/nightly"])
        assert [s.schedule.cron for s in deployment.schedules] == [NIGHTLY_CRON]
        assert deployment.schedules[0].schedule.timezone == "UTC" and deployment.schedules[0].active
        deadline = time.monotonic() + 90  # the scheduler service fills in upcoming runs on its loop
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
            )
            if len(runs) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(1)
    times = sorted(r.expected_start_time.astimezone(UTC) for r in runs)
    now = datetime.now(UTC)
    first = now.replace(hour=2, minute=0, second=0, microsecond=0)
    first += timedelta(days=1) if first <= now else timedelta(0)
    assert times[:3] == [first, first + timedelta(days=1), first + timedelta(days=2)]
    assert all(r.parameters["input"] == deployed["config"]["input"] for r in runs)


def test_run_deployment_with_parameters_completes_through_the_worker(deployed, live_client):
    from prefect import get_client
    from prefect.deployments import run_deployment

    given = {"run_name": "from-ui-run", "sampling": {"num_repeats": 3}}  # what the form changed, nothing else
    flow_run = run_deployment("collect-rollouts/from-ui", parameters=given, timeout=0)
    with get_client(sync_client=True) as client:
        done = _wait_state(client, flow_run.id)
    assert done.state.is_completed(), done.state.message
    assert done.parameters["sampling"] == {"num_repeats": 3}
    rollouts = run_rows(deployed["work"] / "runs" / "from-ui-run", "rollouts")
    assert len(rollouts) == 12 and {r["_ng_rollout_index"] for r in rollouts} == {0, 1, 2}
    manifest = json.loads((deployed["work"] / "runs" / "from-ui-run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["counts"]["rollouts_ok"] == 12


def test_prepared_prompts_event_triggers_the_collection_with_their_uri(deployed, live_client):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment

    out = deployed["work"] / "data"
    upstream = run_deployment(
        "prepare-prompts/prepare", parameters={"out": str(out), "dataset": "chain", "rows": 5}, timeout=0
    )
    on_ready = deployed["ids"]["collect-rollouts/on-prompts-ready"]
    with get_client(sync_client=True) as client:
        prepared = _wait_state(client, upstream.id)
        assert prepared.state.is_completed(), prepared.state.message
        uri = str(out / "prompts" / "chain.jsonl")
        assert Path(uri).exists() and len(Path(uri).read_text().splitlines()) == 5
        deadline = time.monotonic() + 120
        triggered = []
        while not triggered and time.monotonic() < deadline:
            triggered = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[on_ready]))
            )
            time.sleep(1)
        assert triggered, "rollouts.prompts.ready did not trigger the collection deployment"
        collection = _wait_state(client, triggered[0].id)
        events = _events(client, "rollouts.run.completed", f"prefect.flow-run.{collection.id}")
    assert collection.state.is_completed(), collection.state.message
    assert collection.parameters["input"] == uri  # the event's URI, arrived as a string
    runs = [p for p in (deployed["work"] / "runs").iterdir() if p.name.startswith("chain-")]
    assert len(runs) == 1
    rollouts = run_rows(runs[0], "rollouts")
    assert len(rollouts) == 10 and all(r["reward"] in (0.0, 1.0) for r in rollouts)
    assert (runs[0] / "train" / "rl" / "rollouts.parquet").exists()
    assert len(events) == 1
    payload = events[0]["payload"]
    assert payload["run_url"] == str(runs[0]) and payload["rollouts_ok"] == 10 and payload["status"] == "completed"
    assert payload["mean_reward"] == pytest.approx(sum(r["reward"] for r in rollouts) / 10)


def test_served_deployment_runs_with_no_parameters_as_the_serve_script_says(deployed, live_prefect, sim):
    import re
    import subprocess
    import sys

    from prefect import get_client
    from prefect.settings import temporary_settings

    from tests.integration.live_server import ROOT, _stop, run_prefect

    out = deployed["work"] / "served"
    cmd = [
        sys.executable,
        "deployments/serve.py",
        deployed["config"]["input"],
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        str(out),
    ]
    log = deployed["work"] / "serve.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            cmd, env=live_prefect.env(), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while "is being served" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        started = run_prefect(live_prefect, "deployment", "run", "collect-rollouts/collect-rollouts")
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)
        with temporary_settings(updates={"api.url": live_prefect.api_url}), get_client(sync_client=True) as client:
            done = _wait_state(client, flow_run_id)
    finally:
        _stop(proc)
    assert done.state.is_completed(), f"{done.state.message}\n{log.read_text()[-3000:]}"
    runs = list(out.iterdir())
    assert len(runs) == 1 and len(run_rows(runs[0], "rollouts")) == 32  # 4 prompts x the rl preset's 8 repeats


def test_a_cancel_from_the_ui_ends_the_run_cancelled_with_its_rollouts_kept(deployed, live_client):
    """The UI's Cancel (the flow run set to Cancelling through the API) of a deployment run executing in a process
    worker: the worker sends the run's process SIGTERM with Prefect's cancel intent, the collection stops taking
    work, flushes, marks its manifest `interrupted` with the rollouts its files hold, and the run ends Cancelled."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    from rollouts.sim.launch import start_sim_server

    run_dir = deployed["work"] / "runs" / "cancelled-from-ui"

    def stored() -> int:
        return sum(len(f.read_bytes().splitlines()) for f in (run_dir / "rollouts").glob("*.jsonl"))

    with start_sim_server(latency_ms=500, seed=0) as slow, get_client(sync_client=True) as client:
        flow_run = run_deployment(
            "collect-rollouts/from-ui",
            parameters={
                "run_name": "cancelled-from-ui",
                "endpoint": {"model_url": slow.url},  # the rest of the endpoint section as deployed
                "sampling": {"num_repeats": 100},
                "concurrency": {"parallel": 4, "shard_size": 1},
            },
            timeout=0,
        )
        deadline = time.monotonic() + 180
        while stored() < 8:
            assert time.monotonic() < deadline, f"no rollouts stored: {client.read_flow_run(flow_run.id).state}"
            time.sleep(0.2)
        client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled from the UI"))
        done = _wait_state(client, flow_run.id, timeout_s=120)
    assert done.state.is_cancelled(), (done.state, deployed["worker_log"].read_text()[-3000:])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "resume" in manifest["reason"], manifest["reason"]
    assert manifest["counts"]["rollouts_ok"] == stored() >= 8  # the true count, read back from the files
    assert manifest["counts"]["rollouts_expected"] == 400
    assert f"with {stored()} of 400 rollouts verified" in done.state.message  # the flow run's state says it too

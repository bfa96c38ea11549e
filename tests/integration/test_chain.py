"""The pipeline the way a team runs it: a real `prefect server start` (for this module, on a free port, its scheduler
on a short loop), a process work pool and worker, blocks saved through the API, and `deployments/deploy.py` run as
a user runs it. Then (a) prepare-prompts -> `rollouts.prompts.ready` -> the triggered collection reads the prompts
from the storage block's place; (b) `rollouts.run.completed` -> the example training deployment reads the RL file;
(c) the nightly schedule (set to the next minute) fires on `prompts/{date}.jsonl`, and a second run over the same
input emits `rollouts.run.unchanged`; a run from the UI overrides one field and keeps the deployment's others."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import math_rows, run_rows, write_jsonl
from tests.integration.live_server import ROOT, prefect_server, process_worker

pytestmark = pytest.mark.integration
POOL = "team"


@pytest.fixture(scope="module")
def team(sim, tmp_path_factory) -> Any:
    from prefect.settings import temporary_settings

    from blocks import ModelEndpoint, RolloutStorage

    work = tmp_path_factory.mktemp("team")
    place = work / "team-runs"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    (work / "prompts").mkdir()
    write_jsonl(work / "prompts" / f"{today}.jsonl", math_rows(4))  # the day's file of the nightly `{date}` input
    with (
        prefect_server(PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5") as server,
        temporary_settings(updates={"api.url": server.api_url, "flows.heartbeat_frequency": None}),
    ):
        ModelEndpoint(base_url=sim.url, model="sim-model", connection_limit=32).save("sim", overwrite=True)
        RolloutStorage(url=str(place)).save("team-runs", overwrite=True)
        with process_worker(server, POOL) as worker_log:
            team = {"server": server, "place": place, "work": work, "today": today, "worker_log": worker_log}
            _deploy(team, "--storage-block", "team-runs", "--cron", _next_minute_cron())
            yield team


def _next_minute_cron() -> str:
    """A daily cron that fires once, at the next whole minute with at least 20 s to go (UTC): the nightly's first
    run comes by Prefect's own scheduler within ~80 s, and no second one follows it during the module."""
    at = datetime.fromtimestamp((int(time.time()) // 60 + (2 if time.time() % 60 > 40 else 1)) * 60, UTC)
    return f"{at.minute} {at.hour} * * *"


def _deploy(team, *options: str) -> None:
    """`deployments/deploy.py` as a user runs it, over the day's `{date}` file, with the sim model block."""
    deployed = subprocess.run(
        [
            *(sys.executable, "deployments/deploy.py", str(team["work"] / "prompts" / "{date}.jsonl")),
            *("--pool", POOL, "--model-block", "sim", "--num-repeats", "2", "--seed", "7", *options),
        ],
        env=team["server"].env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _runs(deployment: str, state: str | None = None) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with _client() as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment.split("/")[1]]))
        )
    return [r for r in runs if state is None or (r.state and r.state.name == state)]


def _wait(flow_run_id, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    with _client() as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run {flow_run_id} not finished (state {run.state})"
            time.sleep(1)


def _wait_for_run(deployment: str, timeout_s: float = 180, **parameters: str) -> Any:
    """The first run of `deployment` (with these parameters) to start, once it has finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        started = [
            r
            for r in _runs(deployment)
            if r.state and not r.state.is_scheduled() and parameters.items() <= r.parameters.items()
        ]
        if started:
            return _wait(started[0].id)
        assert time.monotonic() < deadline, f"no run of {deployment} started in {timeout_s} s"
        time.sleep(1)


def _events(name: str, flow_run_id, timeout_s: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    with _client() as client:
        while True:
            found = client.request("POST", "/events/filter", json={"filter": {"event": {"name": [name]}}}).json()
            found = [
                e
                for e in found["events"]
                if any(r["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}" for r in e.get("related", []))
            ]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(1)


def _logs(flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with _client() as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in sorted(logs, key=lambda log: log.timestamp)]


def _logs_with(flow_run_id, expected: str, timeout_s: float = 60) -> list[str]:
    """The run's log messages once one contains `expected`: a flow run's logs reach the API in batches, shortly
    after its state, so wait for the line rather than race it."""
    deadline = time.monotonic() + timeout_s
    while True:
        messages = _logs(flow_run_id)
        if any(expected in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


def _deployment_run(team, name: str, *params: str) -> Any:
    """A run of the deployment `name` with `key=value` parameters (values read as JSON when they are), through the
    API as the UI's "Run" starts one; its flow run id."""

    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    with _client() as client:
        deployment = client.read_deployment_by_name(name)
        parameters = {key: value(text) for key, text in (kv.split("=", 1) for kv in params)}
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id


def test_prepared_prompts_trigger_a_collection_that_triggers_training(team):
    upstream = _wait(_deployment_run(team, "prepare-prompts/prepare", "dataset=chain", "rows=5"))
    assert upstream.state.is_completed(), upstream.state.message
    prompts = team["place"] / "prompts" / "chain.jsonl"  # the storage block's place, not the worker's directory
    assert len(prompts.read_text().splitlines()) == 5
    collection = _wait_for_run("collect-rollouts/on-prompts-ready")
    assert collection.state.is_completed(), collection.state.message
    assert collection.parameters["input"] == str(prompts)
    (run_dir,) = [p for p in team["place"].iterdir() if p.name.startswith("chain-")]
    assert len(run_rows(run_dir, "rollouts")) == 10
    (completed,) = _events("rollouts.run.completed", collection.id)
    payload = completed["payload"]
    assert (payload["new_rollouts"], payload["resumed"], payload["rollouts_ok"]) == (10, False, 10)
    rl_file = payload["outputs"]["rl"][0]
    assert rl_file == str(run_dir / "train" / "rl" / "rollouts.parquet")
    training = _wait_for_run("train-on-rollouts/on-run-completed", rl_file=rl_file)  # the nightly's may run too
    assert training.state.is_completed(), training.state.message
    assert f"training on 10 rollouts from {rl_file}" in _logs_with(training.id, "training on")
    # the collection's Logs tab: a line per finished shard, the training files' places, no "None" anywhere
    messages = _logs_with(collection.id, "rl training files: ")
    shard_lines = [m for m in messages if m.startswith("shard ")]
    assert shard_lines and "10/10 rollouts" in shard_lines[-1] and "rollouts/s, mean reward" in shard_lines[-1]
    assert any(m.startswith(f"rl training files: {rl_file}") for m in messages), messages
    assert not [m for m in messages if "None" in m], [m for m in messages if "None" in m]


def test_a_run_overrides_one_field_and_keeps_the_deployment_s_others(team):
    done = _wait(_deployment_run(team, "collect-rollouts/from-ui", "run_name=partial", 'sampling={"num_repeats": 3}'))
    assert done.state.is_completed(), done.state.message
    manifest = json.loads((team["place"] / "partial" / "manifest.json").read_text())
    config = manifest["config"]
    assert config["sampling"] == {**config["sampling"], "num_repeats": 3, "seed": 7}  # the deployment's seed kept
    assert config["endpoint"]["block"] == "sim" and Path(config["input"]).name == f"{team['today']}.jsonl"
    assert manifest["counts"]["rollouts_ok"] == 12


def test_the_schedule_collects_the_day_file_and_a_rerun_is_unchanged(team):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    _wait_for_run("collect-rollouts/nightly", timeout_s=150)  # the next minute, by Prefect's own scheduler
    with _client() as client:
        nightly = DeploymentFilter(name=DeploymentFilterName(any_=["nightly"]))
        (deployment,) = client.read_deployments(deployment_filter=nightly)
        client.pause_deployment(deployment.id)  # no more scheduled runs: the rerun below is the only other one
    started = [r for r in _runs("collect-rollouts/nightly") if r.state and not r.state.is_scheduled()]
    finished = sorted((_wait(r.id) for r in started), key=lambda r: r.start_time)
    assert all(r.state.is_completed() for r in finished), [r.state.message for r in finished]
    (first,) = _events("rollouts.run.completed", finished[0].id)  # the day's file: new rollouts
    assert first["payload"]["new_rollouts"] == 8 and first["payload"]["resumed"] is False
    assert first["payload"]["run_url"].startswith(str(team["place"] / team["today"]))
    again = _wait(_deployment_run(team, "collect-rollouts/nightly"))  # the same day's file once more
    assert again.state.is_completed(), again.state.message
    assert _events("rollouts.run.completed", again.id, timeout_s=5) == []
    (unchanged,) = _events("rollouts.run.unchanged", again.id)
    assert unchanged["payload"]["new_rollouts"] == 0 and unchanged["payload"]["resumed"] is True
    assert unchanged["payload"]["run_url"] == first["payload"]["run_url"]


def test_the_chain_with_prompts_and_runs_in_an_s3_bucket(team, s3_endpoint):
    """The same chain with the team's RolloutStorage on object storage (moto's S3): the prompts, the runs and the
    training file are written to and read from the bucket by the worker's flow runs, through the block's options
    and credentials. Runs last in the module: deploy.py again replaces the deployments' storage block (and the
    next-minute schedule by the nightly default)."""
    import boto3
    import s3fs

    from blocks import RolloutStorage

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="team")
    RolloutStorage(
        url="s3://team/runs",
        options={"client_kwargs": {"endpoint_url": s3_endpoint}},
        secret_options={"key": "testing", "secret": "testing"},
    ).save("team-s3", overwrite=True)
    _deploy(team, "--storage-block", "team-s3")
    upstream = _wait(_deployment_run(team, "prepare-prompts/prepare", "dataset=chain-s3", "rows=3"))
    assert upstream.state.is_completed(), upstream.state.message
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    prompts = "s3://team/runs/prompts/chain-s3.jsonl"
    assert len(fs.cat(prompts).splitlines()) == 3
    collection = _wait_for_run("collect-rollouts/on-prompts-ready", input=prompts)
    assert collection.state.is_completed(), collection.state.message
    (run_dir,) = [p for p in fs.ls("team/runs") if p.split("/")[-1].startswith("chain-s3-")]
    manifest = json.loads(fs.cat(f"{run_dir}/manifest.json"))
    assert manifest["status"] == "completed" and manifest["counts"]["rollouts_ok"] == 6
    (completed,) = _events("rollouts.run.completed", collection.id)
    rl_file = completed["payload"]["outputs"]["rl"][0]
    assert rl_file == f"s3://{run_dir}/train/rl/rollouts.parquet" and fs.exists(rl_file)
    training = _wait_for_run("train-on-rollouts/on-run-completed", rl_file=rl_file)
    assert training.state.is_completed(), training.state.message
    assert training.parameters["storage_block"] == "team-s3"
    assert f"training on 6 rollouts from {rl_file}" in _logs_with(training.id, "training on")
    assert not list(team["place"].glob("chain-s3*"))  # nothing in the local place of the first storage block

"""Blocks on a real Prefect server: registered with `prefect block register -m blocks`, resolved by name inside the
flow, and their secrets found in no file the run writes, no flow-run parameter, log, artifact or event."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import math_rows, write_jsonl
from tests.integration.live_server import run_prefect

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("board")]
KEY, HEADER, S3_SECRET = "sk-canary-3f9a1c", "hdr-canary-77b2", "s3-canary-0d4e"


def test_blocks_register_from_the_module(live_client):
    out = run_prefect(live_client, "block", "register", "-m", "blocks")
    assert "Model Endpoint" in out and "Rollout Storage" in out
    types = run_prefect(live_client, "block", "type", "ls")
    assert "rollouts-model-endpoint" in types and "rollouts-storage" in types


def test_endpoint_block_hands_out_a_client_with_its_key_and_headers():
    from blocks import ModelEndpoint

    block = ModelEndpoint(
        base_url="http://127.0.0.1:9/v1/",
        model="sim-model",
        api_key=KEY,
        extra_headers={"X-Team": HEADER},
        connection_limit=16,
        request_timeout=30,
    )
    client = block.get_client()
    assert client.headers["authorization"] == f"Bearer {KEY}" and client.headers["x-team"] == HEADER
    assert client.timeout.read == 30 and block.base_url == "http://127.0.0.1:9/v1"
    assert KEY not in repr(block) and KEY not in repr(block.auth())


def test_unknown_block_is_a_clear_config_error(live_client):
    from blocks import resolve_endpoint
    from rollouts.errors import ConfigError

    with pytest.raises(ConfigError, match="--model-block 'nope': no Model Endpoint block of that name"):
        resolve_endpoint("nope")


def test_credentials_in_a_block_s_plain_fields_are_refused_without_echoing_them(live_client):
    """A password in a block's URL, or a key in its plain options, would be stored and shown in the clear: refused
    when the block is made, and when one made elsewhere (the UI's form checks only the types) is loaded by a run."""
    from pydantic import ValidationError

    from blocks import ModelEndpoint, RolloutStorage, resolve_endpoint, resolve_storage
    from rollouts.errors import ConfigError

    refused = [
        lambda: ModelEndpoint(base_url=f"http://user:{KEY}@127.0.0.1:9/v1", model="m"),
        lambda: RolloutStorage(url=f"s3://b/runs?X-Amz-Signature={S3_SECRET}"),
        lambda: RolloutStorage(url="s3://b/runs", options={"key": "AKIA", "secret": S3_SECRET}),
    ]
    for make in refused:
        with pytest.raises(ValidationError, match="credentials") as info:
            make()
        assert KEY not in str(info.value) and S3_SECRET not in str(info.value)
    ModelEndpoint.model_construct(base_url=f"http://user:{KEY}@127.0.0.1:9/v1", model="m").save(
        "leaky-model", overwrite=True
    )
    RolloutStorage.model_construct(url="s3://b/runs", options={"secret": S3_SECRET}).save("leaky-store", overwrite=True)
    with pytest.raises(ConfigError, match="--model-block 'leaky-model': .*carries credentials") as model_error:
        resolve_endpoint("leaky-model")
    with pytest.raises(ConfigError, match="--storage-block 'leaky-store': .*hold credentials") as storage_error:
        resolve_storage("leaky-store")
    assert KEY not in str(model_error.value) and S3_SECRET not in str(storage_error.value)


def test_a_run_from_blocks_keeps_their_secrets_out_of_everything_it_writes(tmp_path, sim, s3_endpoint, live_client):
    import boto3
    import s3fs
    from prefect import get_client

    from blocks import ModelEndpoint, RolloutStorage
    from flows.collect import collect_rollouts
    from rollouts.config import CollectConfig

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="blocks")
    ModelEndpoint(
        base_url=sim.url, model="sim-model", api_key=KEY, extra_headers={"X-Team": HEADER}, connection_limit=8
    ).save("canary-model", overwrite=True)
    RolloutStorage(
        url="s3://blocks/runs",
        options={"client_kwargs": {"endpoint_url": s3_endpoint}},
        secret_options={"key": "testing", "secret": S3_SECRET},
    ).save("canary-store", overwrite=True)
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(6))
    state = collect_rollouts(
        CollectConfig(
            input=str(src),
            model_block="canary-model",
            storage_block="canary-store",
            num_repeats=2,
            shard_size=3,
            run_name="canary",
            objective="rl,sft",
        ),
        return_state=True,
    )
    summary = state.result()
    assert summary.status == "completed" and summary.run_url == "s3://blocks/runs/canary" and summary.rollouts_ok == 12
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    files = fs.find("blocks/runs/canary")
    assert len(files) > 10 and any(f.endswith("train/sft/openai.jsonl") for f in files)
    manifest = json.loads(fs.cat("blocks/runs/canary/manifest.json"))
    assert manifest["identity"]["model"] == "sim-model" and manifest["config"]["endpoint"]["block"] == "canary-model"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs()
        artifacts = client.read_artifacts()
        events = client.request("POST", "/events/filter", json={"filter": {}}).json()["events"]
        task_runs = client.read_task_runs()
    seen = {
        "files": b"".join(fs.cat(f) for f in files).decode(errors="replace"),
        "parameters": json.dumps(flow_run.parameters),
        "logs": " ".join(log.message for log in logs),
        "artifacts": " ".join(str(a.data) for a in artifacts),
        "events": json.dumps(events),
        "task runs": " ".join(t.model_dump_json() for t in task_runs),
    }
    config = CollectConfig.model_validate(flow_run.parameters["config"])
    assert (config.endpoint.block, config.storage.block) == ("canary-model", "canary-store") and artifacts and task_runs
    for where, text in seen.items():
        for secret in (KEY, HEADER, S3_SECRET):
            assert secret not in text, f"{secret} leaked into {where}"

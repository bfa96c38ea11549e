"""Secrets stored nowhere (canaries grepped for in every file a run writes and in the Prefect API), the pre-flight
check of remote environments, and re-runs that regenerate what only a new generation (and session) can fix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.collector.runtime import SharedClients
from rollouts.config import CollectConfig
from rollouts.errors import ConfigError
from rollouts.run import read_records, run_store
from rollouts.stages import generate, verify
from rollouts.stages.outcome import run_failure_counts
from rollouts.stages.shard import plan_run
from tests.integration.conftest import free_port, math_rows, run_rows, write_jsonl
from tests.servers.resources_server import start_resources_server

ROOT = Path(__file__).resolve().parents[2]
CANARY = "canary-9d41-s3cr3t"


def rollouts_cli(*args: str, api_url: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": api_url, **env}
    return subprocess.run(
        [sys.executable, "-m", "commands", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def files_with(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


async def prefect_records() -> str:
    """Every flow run's parameters, every log line and every artifact the Prefect API holds, as one text."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
    return json.dumps(
        [[r.parameters for r in runs], [log.message for log in logs], [a.model_dump(mode="json") for a in artifacts]],
        default=str,
    )


def test_an_api_key_canary_is_written_nowhere(tmp_path, sim, prefect_server):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(3))
    out = rollouts_cli(
        "collect",
        str(src),
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        str(tmp_path / "runs"),
        "--api-key-env",
        "ROLLOUTS_CANARY_KEY",
        "--num-repeats",
        "2",
        "--run-name",
        "canary",
        "--no-progress",
        "--objective",
        "rl,sft,dpo",
        api_url=prefect_server,
        ROLLOUTS_CANARY_KEY=CANARY,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(run_rows(tmp_path / "runs" / "canary", "rollouts")) == 6
    assert files_with(tmp_path, CANARY) == [] and CANARY not in out.stdout + out.stderr
    assert CANARY not in asyncio.run(prefect_records())


REFUSED_OPTIONS = {
    "url": [],
    "storage": ["--storage-options", json.dumps({"secret": CANARY, "key": "AKIA"})],
    # a presigned URL's signature, as a key and in a URL
    "signature": ["--storage-options", json.dumps({"X-Amz-Signature": CANARY})],
    "signed-url": [
        "--storage-options",
        json.dumps({"client_kwargs": {"endpoint_url": f"http://h/?X-Amz-Signature={CANARY}"}}),
    ],
    "ray": ["--task-runner", "ray", "--ray-address", f"ray://admin:{CANARY}@127.0.0.1:10001"],
}


@pytest.mark.parametrize("option", list(REFUSED_OPTIONS))
def test_credentials_in_a_url_or_storage_options_are_refused_and_written_nowhere(tmp_path, sim, prefect_server, option):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    model_url = sim.url.replace("http://", f"http://user:{CANARY}@") if option == "url" else sim.url
    extra = REFUSED_OPTIONS[option]
    out = rollouts_cli(
        "collect",
        str(src),
        "--model-url",
        model_url,
        "--model",
        "sim-model",
        "--out",
        str(tmp_path / "runs"),
        "--run-name",
        "refused",
        "--no-progress",
        *extra,
        api_url=prefect_server,
    )
    assert out.returncode == 2 and "credentials" in out.stderr, out.stderr[-2000:]
    assert CANARY not in out.stdout + out.stderr and files_with(tmp_path, CANARY) == []
    assert not (tmp_path / "runs" / "refused" / "manifest.json").exists()


def test_refused_credentials_never_reach_the_flow_parameters(tmp_path, sim, prefect_server):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(1))
    marker = f"{CANARY}-params"
    rollouts_cli(
        "collect",
        str(src),
        "--model-url",
        sim.url.replace("http://", f"http://u:{marker}@"),
        "--model",
        "sim-model",
        "--out",
        str(tmp_path / "runs"),
        "--no-progress",
        api_url=prefect_server,
    )
    assert marker not in asyncio.run(prefect_records())


def test_a_closed_remote_environment_port_fails_the_pre_flight_with_a_clear_message(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    port = free_port()
    config = CollectConfig(
        input=str(src),
        out=str(tmp_path / "runs"),
        model_url=sim.url,
        model="sim-model",
        remote_env={"gym": f"http://127.0.0.1:{port}"},
        env="gym",
    )
    with pytest.raises(ConfigError) as info:
        plan_run(config)
    assert info.value.message.startswith(f"cannot reach remote environment 'gym' at http://127.0.0.1:{port}")
    assert "connection refused" in info.value.message and "--remote-env gym=URL" in info.value.message
    assert not (tmp_path / "runs").exists()
    with start_resources_server() as gym:  # a live server passes
        plan_run(
            config.model_copy(
                update={"environments": config.environments.model_copy(update={"remote_env": {"gym": gym.url}})}
            )
        )


async def run_shard(config: CollectConfig, plan) -> None:
    clients, board = SharedClients(idle_close_s=0.0), ProgressBoard()
    limiter = InflightLimiter(config.parallel_per_process)
    for shard in plan.shards:
        await generate.generate_shard(plan.run, shard.shard, clients=clients, limiter=limiter, board=board)
        await verify.verify_shard(plan.run, shard.shard, board=board)
    await clients.close_all()


def test_sessions_lost_to_a_restarted_environment_are_regenerated_with_new_sessions(tmp_path, sim):
    rows = [
        {"prompt": f"What is {a} + 2?", "expected_answer": str(a + 2), "agent_ref": {"name": "gym"}} for a in range(3)
    ]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    with start_resources_server() as gym:
        config = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=sim.url,
            model="sim-model",
            remote_env={"gym": gym.url},
            num_repeats=2,
            temperature=0.0,
            run_name="restart",
        )
        plan = plan_run(config)
        store = run_store(plan.run)
        shard = plan.shards[0].shard

        # Generated, then the server restarts before verification: every session is gone.
        async def generated() -> None:
            clients = SharedClients(idle_close_s=0.0)
            try:
                await generate.generate_shard(
                    plan.run, shard, clients=clients, limiter=InflightLimiter(4), board=ProgressBoard()
                )
            finally:
                await clients.close_all()  # this loop ends here: its clients close with it, not on an idle timer

        asyncio.run(generated())
        gym.state.sessions.clear()
        asyncio.run(verify.verify_shard(plan.run, shard, board=ProgressBoard()))
        failures = list(read_records(store, "failures", f"{shard}.jsonl"))
        assert len(failures) == 6 and all(
            f["error"]["status_code"] == 422 and f["error"]["retryable"] for f in failures
        )
        counts = run_failure_counts(plan)
        assert (counts.retryable_total, counts.permanent_total) == (6, 0)
        seeds = gym.calls["seed_session"]
        asyncio.run(run_shard(config, plan_run(config)))  # the re-run: new generations, new sessions
        assert gym.calls["seed_session"] - seeds == 6
        verified = list(read_records(store, "rollouts", f"{shard}.jsonl"))
        assert len(verified) == 6 and all(r["reward"] == 1.0 for r in verified)
        assert list(read_records(store, "failures", f"{shard}.jsonl")) == []


def test_seed_session_retries_count_as_the_rollouts_attempts(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?", "expected_answer": "2"}])
    with start_resources_server() as gym:
        gym.fail_next("seed_session", count=3, status=503)
        config = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=sim.url,
            model="sim-model",
            env="gym",
            remote_env={"gym": gym.url},
            num_repeats=1,
            run_name="seed",
        )
        plan = plan_run(config)
        asyncio.run(run_shard(config, plan))
    (failure,) = run_rows(Path(plan.run.run_url), "failures")
    assert failure["attempts"] == 3 and failure["error"]["attempts"] == 3
    assert (failure["error"]["type"], failure["error"]["status_code"], failure["error"]["stage"]) == (
        "VerifierError",
        503,
        "generate",
    )

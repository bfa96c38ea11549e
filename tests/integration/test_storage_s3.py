"""A run on S3 (moto) killed mid-way: never looks complete, resumes without loss or duplicates, and its final
manifest lists every committed file with its size and checksum."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollouts.sim.launch import start_sim_server
from rollouts.storage import Store, check_inventory
from tests.integration.conftest import math_rows, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("board")]
ROOT = Path(__file__).resolve().parents[2]


def test_s3_run_killed_mid_way_is_never_complete_and_resumes_whole(tmp_path, s3_endpoint, live_client):
    import boto3

    from flows.collect import collect_rollouts
    from rollouts.config import CollectConfig

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="atomic")
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(40))
    store = Store("s3://atomic/runs/killed")
    with start_sim_server(latency_ms=300, seed=5) as server:
        cmd = [
            sys.executable,
            "-m",
            "commands",
            "collect",
            str(src),
            "--out",
            "s3://atomic/runs",
            "--model-url",
            server.url,
            "--model",
            "sim-model",
            "--num-repeats",
            "4",
            "--parallel",
            "8",
            "--shard-size",
            "5",
            "--max-concurrent-shards",
            "2",
            "--run-name",
            "killed",
            "--no-progress",
            "--temperature",
            "0.5",
            "--seed",
            "1",
        ]
        env = {**live_client.env(), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while store.fs.invalidate_cache() or len(store.glob("rollouts/*.jsonl")) < 2:  # some shards committed
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()  # waits, and closes the stderr pipe
        store.fs.invalidate_cache()
        killed = store.read_json("manifest.json")
        assert killed["status"] == "running" and "files" not in killed  # a reader sees a run in progress
        committed = {f: store.fs.cat(f) for f in store.glob("rollouts/*.jsonl")}
        assert all(blob.endswith(b"\n") for blob in committed.values())  # whole objects, never a torn line
        requests_before = server.stats()["requests"]
        cfg = CollectConfig(
            input=str(src),
            out="s3://atomic/runs",
            model_url=server.url,
            model="sim-model",
            num_repeats=4,
            parallel=8,
            shard_size=5,
            run_name="killed",
            temperature=0.5,
            seed=1,
        )
        summary = collect_rollouts(cfg)
        store.fs.invalidate_cache()
        requests_after = server.stats()["requests"]
    assert summary.status == "completed" and summary.rollouts_ok == 160
    rows = [json.loads(line) for line in store.iter_lines("rollouts", "00000.jsonl")]
    every = [json.loads(line) for f in store.glob("rollouts/*.jsonl") for line in store.fs.cat(f).decode().splitlines()]
    assert len(every) == 160 == len({r["rollout_id"] for r in every}) and len(rows) == 20
    assert not store.fs.glob(store.path("**", "*.parts"))
    for f, blob in committed.items():  # shards finished before the kill are kept byte for byte
        assert store.fs.cat(f) == blob
    assert requests_after - requests_before < 160  # the committed shards were not generated again
    manifest = store.read_json("manifest.json")
    assert manifest["status"] == "completed" and check_inventory(store, manifest["files"]) == []
    listed = {k for k in manifest["files"] if k.startswith("rollouts/")}
    assert listed == {f"rollouts/{i:05d}.jsonl" for i in range(8)}
    assert all(manifest["files"][k]["size"] == store.fs.info(store.path(k))["size"] for k in listed)

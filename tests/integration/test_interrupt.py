"""Ctrl-C of `rollouts collect`: exit 130 within seconds, no new requests, a manifest marked `interrupted`, and a
resume that completes the run. The real command in a subprocess, against the simulated server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rollouts.sim.launch import start_sim_server
from tests.integration.conftest import math_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
PROMPTS, REPEATS = 200, 4


def test_sigint_stops_within_seconds_marks_the_run_interrupted_and_a_resume_completes_it(tmp_path, prefect_server):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    src = write_jsonl(tmp_path / "p.jsonl", math_rows(PROMPTS))
    run = tmp_path / "runs" / "stopped"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_server}
    with start_sim_server(latency_ms=200, seed=0) as sim:
        command = [
            sys.executable,
            "-m",
            "commands",
            "collect",
            str(src),
            "--model-url",
            sim.url,
            "--model",
            "sim-model",
            "--out",
            str(tmp_path / "runs"),
            "--run-name",
            "stopped",
            "--num-repeats",
            str(REPEATS),
            "--parallel",
            "32",
            "--shard-size",
            "20",
            "--no-progress",
            "--objective",
            "rl",
        ]
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            lines = sum(
                len(f.read_bytes().splitlines())
                for folder in ("generations", "rollouts")
                for f in (run / folder).glob("*.jsonl")
            )
            if lines >= 100:
                break
            time.sleep(0.05)
        requests = sim.stats()["requests"]
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        took = time.monotonic() - stopped_at
        time.sleep(0.5)
        after = sim.stats()["requests"] - requests
        assert process.returncode == 130 and took < 10, (process.returncode, took, stderr.decode()[-2000:])
        assert "run the same command again to resume" in stderr.decode()
        assert after <= 32  # at most what was already on its way: nothing new starts
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "interrupted" and "resume" in manifest["reason"]
        stored = sum(len(f.read_bytes().splitlines()) for f in (run / "rollouts").glob("*.jsonl"))
        assert manifest["counts"]["rollouts_ok"] == stored > 0  # the true count, not only finished shards'
        with get_client(sync_client=True) as client:
            (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["stopped"])))
        assert flow_run.state.is_cancelled(), flow_run.state
        assert f"with {stored} of {PROMPTS * REPEATS} rollouts verified" in flow_run.state.message
        resumed = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(line) for f in (run / "rollouts").glob("*.jsonl") for line in f.read_bytes().splitlines()]
    assert len(rows) == PROMPTS * REPEATS and len({r["rollout_id"] for r in rows}) == len(rows)

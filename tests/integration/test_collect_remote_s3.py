"""Remote NeMo Gym environments (tools + verify over HTTP), S3 output, and resume after a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from rollouts.sim.launch import start_sim_server
from rollouts.training import ProcessConfig, process
from tests.integration.conftest import math_rows, run_rows, write_jsonl
from tests.servers.resources_server import start_resources_server

pytestmark = pytest.mark.usefixtures("prefect_server", "board")
ROOT = Path(__file__).resolve().parents[2]
CALC_TOOL = {
    "type": "function",
    "name": "calculate",
    "description": "Evaluate arithmetic",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_remote_environment_calls_tools_and_scores_through_its_verify(tmp_path, sim, api):
    rows = [
        {
            "responses_create_params": {
                "input": [{"role": "user", "content": f"What is {a} * 3?"}],
                "tools": [CALC_TOOL],
            },
            "agent_ref": {"name": "calc"},
            "expected_answer": str(a * 3),
        }
        for a in (4, 11, 25)
    ]
    rows.append({"prompt": "What is 1 + 1?", "expected_answer": "2"})  # no agent_ref: the default --env math
    src = write_jsonl(tmp_path / "prompts.jsonl", rows)
    with start_resources_server() as gym:
        cfg = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=sim.url,
            model="sim-model",
            api=api,
            remote_env={"calc": gym.url},
            num_repeats=2,
            temperature=0.0,
            seed=3,
            run_name=f"remote-{api}",
        )
        summary = collect_rollouts(cfg)
        calls = dict(gym.calls)
    rollouts = run_rows(Path(summary.run_url), "rollouts")
    assert summary.status == "completed" and len(rollouts) == 8
    remote = [r for r in rollouts if r["agent_ref"]["name"] == "calc"]
    assert len(remote) == 6 and calls["seed_session"] == 6 and calls["verify"] == 6 and calls["calculate"] == 6
    for r in remote:
        kinds = [item["type"] for item in r["response"]["output"]]
        assert "function_call" in kinds and "function_call_output" in kinds and kinds[-1] == "message"
        output = next(i for i in r["response"]["output"] if i["type"] == "function_call_output")
        assert json.loads(output["output"])["result"] == int(r["expected_answer"])
        assert r["judge"] == "substring" and r["session_tool_calls"] == 1  # the verifier saw this rollout's session
        assert r["reward"] == 1.0  # temperature 0 and the tool's answer: always right
        assert "_session" not in r
    assert all(r["extracted_answer"] == "2" for r in rollouts if r["agent_ref"]["name"] == "math")


def test_remote_verifier_outage_becomes_verify_failures(tmp_path, sim):
    rows = [{"prompt": f"What is {a} + 1?", "expected_answer": str(a + 1)} for a in range(3)]
    src = write_jsonl(tmp_path / "prompts.jsonl", rows)
    with start_resources_server() as gym:
        gym.fail_next("verify", count=1000, status=500)
        cfg = CollectConfig(
            input=str(src),
            out=str(tmp_path / "runs"),
            model_url=sim.url,
            model="sim-model",
            env="judge",
            remote_env={"judge": gym.url},
            num_repeats=1,
            run_name="outage",
        )
        state = collect_rollouts(cfg, return_state=True)
    assert state.is_failed()
    failures = run_rows(tmp_path / "runs" / "outage", "failures")
    assert len(failures) == 3
    assert all(f["error"]["type"] == "VerifierError" and f["error"]["stage"] == "verify" for f in failures)
    assert all(f["response"]["output"] for f in failures)  # the generation is kept with the failure


def test_run_written_to_s3_and_read_back(tmp_path, sim, s3_endpoint):
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="runs")
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(5) + ["{oops"])
    cfg = CollectConfig(
        input=str(src),
        out="s3://runs/team",
        model_url=sim.url,
        model="sim-model",
        num_repeats=3,
        shard_size=2,
        temperature=0.0,
        run_name="s3run",
        objective="rl,sft",
    )
    summary = collect_rollouts(cfg)
    assert summary.run_url == "s3://runs/team/s3run" and summary.rollouts_ok == 15
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    files = sorted(fs.glob("runs/team/s3run/rollouts/*.jsonl"))
    assert len(files) == 3 and not fs.glob("runs/team/s3run/rollouts/*.parts")
    rows = [json.loads(line) for f in files for line in fs.cat(f).decode().splitlines()]
    assert len(rows) == 15 and {r["_ng_task_index"] for r in rows} == {0, 1, 2, 3, 4}
    assert json.loads(fs.cat("runs/team/s3run/manifest.json"))["status"] == "completed"
    assert json.loads(fs.cat("runs/team/s3run/rejects.jsonl").decode().splitlines()[0])["line"] == 6
    assert fs.exists("runs/team/s3run/profile/profile.json")
    sft = [json.loads(line) for line in fs.cat("runs/team/s3run/train/sft/openai.jsonl").decode().splitlines()]
    assert len(sft) == 5 and all(r["messages"][-1]["role"] == "assistant" for r in sft)
    assert fs.exists("runs/team/s3run/train/rl/rollouts.parquet") and fs.exists(
        "runs/team/s3run/train/rl/data_card.json"
    )
    # `rollouts process` reads the run from S3 and writes its training files back there
    result = process(
        ["s3://runs/team/s3run"],
        ProcessConfig(objective="rl", formats=("jsonl",), advantage_scale="none"),
        "s3://runs/reprocessed",
    )
    rl_rows = [json.loads(line) for line in fs.cat("runs/reprocessed/rl/rollouts.jsonl").decode().splitlines()]
    assert result.rows == {"jsonl": 15} and len(rl_rows) == 15
    assert all(abs(r["advantage"] - (r["reward"] - r["group_mean"])) < 1e-9 for r in rl_rows)
    # resume against S3: nothing new is generated and nothing is duplicated
    again = collect_rollouts(cfg)
    assert again.rollouts_ok == 15
    assert sum(len(fs.cat(f).decode().splitlines()) for f in files) == 15


def test_a_killed_run_resumes_without_duplicates(tmp_path, prefect_server):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(40))
    out = tmp_path / "runs"
    with start_sim_server(latency_ms=150, seed=5) as server:
        cmd = [
            sys.executable,
            "-m",
            "commands",
            "collect",
            str(src),
            "--out",
            str(out),
            "--model-url",
            server.url,
            "--model",
            "sim-model",
            "--num-repeats",
            "4",
            "--parallel",
            "8",
            "--shard-size",
            "10",
            "--run-name",
            "killed",
            "--no-progress",
            "--temperature",
            "0.5",
            "--seed",
            "1",
        ]
        env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        run = out / "killed"
        finished = [
            run / "generations",
            run / "rollouts",
        ]  # in-process math rollouts are written verified, to rollouts/
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = sum(len(f.read_text().splitlines()) for d in finished if d.exists() for f in d.glob("*.jsonl"))
            if done >= 40:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()  # waits, and closes the stderr pipe
        before = {
            json.loads(line)["rollout_id"]
            for d in finished
            if d.exists()
            for f in d.glob("*.jsonl")
            for line in f.read_text().splitlines()
            if line.strip()
        }
        assert 40 <= len(before) < 160
        requests_before = server.stats()["requests"]
        cfg = CollectConfig(
            input=str(src),
            out=str(out),
            model_url=server.url,
            model="sim-model",
            num_repeats=4,
            parallel=32,
            shard_size=10,
            run_name="killed",
            temperature=0.5,
            seed=1,
        )
        summary = collect_rollouts(cfg)
        stats = server.stats()
    rollouts = run_rows(out / "killed", "rollouts")
    assert summary.status == "completed" and len(rollouts) == 160
    assert len({r["rollout_id"] for r in rollouts}) == 160
    # Exactly the rollouts the killed run had not finished were requested again.
    assert stats["requests"] - requests_before == 160 - len(before)

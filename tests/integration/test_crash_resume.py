"""kill -9 of `rollouts collect` at random points, then resume: every rollout exactly once, no torn line, and the
rows an earlier attempt wrote kept byte for byte. The real command in a subprocess, against the simulated server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from rollouts.sim.launch import start_sim_server
from tests.integration.conftest import math_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
PROMPTS, REPEATS, KILLS = 100, 4, 3


def complete_lines(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def finished(run: Path) -> int:
    """Rollouts an attempt has durably finished so far: generated ok or verified, by id."""
    ids = set()
    for folder in ("generations", "rollouts"):
        for file in (run / folder).glob("*.jsonl"):
            for line in complete_lines(file).splitlines():
                record = json.loads(line)
                if record.get("status") == "ok":
                    ids.add(record["rollout_id"])
    return len(ids)


def test_kill_9_at_random_points_then_resume_gives_every_rollout_exactly_once(tmp_path, prefect_server):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(PROMPTS))
    run = tmp_path / "runs" / "crash"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_server}
    kept: dict[Path, bytes] = {}
    with start_sim_server(latency_ms=100, seed=0) as sim:
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
            "crash",
            "--num-repeats",
            str(REPEATS),
            "--parallel",
            "8",
            "--shard-size",
            "10",
            "--temperature",
            "0.5",
            "--seed",
            "3",
            "--objective",
            "rl",
            "--no-progress",
        ]
        before = 0
        for kill in range(KILLS):
            process = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 60
                while finished(run) <= before and process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)  # each attempt gets past what the last one kept before it dies
                time.sleep(rng.uniform(0.0, 1.0))
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
            now = finished(run)
            assert now > before, f"attempt {kill + 1} kept nothing new (seed {seed})"
            before = now
            for file in (run / "rollouts").glob("*.jsonl"):
                kept[file] = complete_lines(file)
        assert before < PROMPTS * REPEATS, f"the run finished before the last kill (seed {seed}): kill sooner"
        final = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    assert final.returncode == 0, final.stderr[-3000:]
    rows, torn = [], []
    for file in sorted(run.rglob("*.jsonl")):
        data = file.read_bytes()
        if data and not data.endswith(b"\n"):
            torn.append(file)
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                torn.append(file)
                continue
            if file.parent.name == "rollouts":
                rows.append(record)
    assert torn == [], f"torn lines in {torn} (seed {seed})"
    ids = [r["rollout_id"] for r in rows]
    assert len(rows) == PROMPTS * REPEATS and len(set(ids)) == len(ids), f"seed {seed}"
    for file, earlier in kept.items():  # rows written before a crash are still there, byte for byte, in order
        assert file.read_bytes().startswith(earlier), f"{file.name} changed after a crash (seed {seed})"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["counts"]["rollouts_ok"] == PROMPTS * REPEATS
    generations = [
        json.loads(line) for file in (run / "generations").glob("*.jsonl") for line in file.read_bytes().splitlines()
    ]
    assert all("response" not in g for g in generations)  # one full copy: in rollouts/

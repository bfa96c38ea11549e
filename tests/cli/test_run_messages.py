"""What a run says, read as a user reads it: a run in which no rollout verifies, on Prefect's embedded server
(`ROLLOUTS_SERVER=ephemeral`, no UI), says so in words: no "None" in its progress lines, its flow run's log lines,
its error or its manifest's reason."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys

from rollouts.sim.launch import start_sim_server
from tests.cli.conftest import ROOT
from tests.integration.conftest import math_rows, write_jsonl


def test_a_failed_run_on_the_embedded_server_has_no_none_in_what_it_prints(tmp_path):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(2))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.update(
        PYTHONPATH=str(ROOT),
        ROLLOUTS_SERVER="ephemeral",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_LOGGING_LEVEL="",  # as a user has it: the command's own default (INFO) applies
    )
    with start_sim_server(latency_ms=5, seed=0, fail_rate=1.0) as broken:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "commands", "collect", str(src), "--out", str(tmp_path / "runs")),
                *("--model-url", broken.url, "--model", "sim-model", "--num-repeats", "1", "--max-retries", "0"),
                *("--run-name", "all-failed", "--no-model-check"),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    manifest = json.loads((tmp_path / "runs" / "all-failed" / "manifest.json").read_text())
    assert done.returncode == 1 and manifest["status"] == "failed", done.stderr[-3000:]
    assert "2 of 2 rollouts failed" in done.stdout and "Prefect UI" not in done.stderr  # no UI to link to
    printed = [line for line in (done.stdout + done.stderr).splitlines() if "None" in line]
    assert printed == [] and "None" not in manifest["reason"], printed
    # the flow run's log lines, as the embedded server stored them (its Logs tab, were there a UI)
    with contextlib.closing(sqlite3.connect(tmp_path / "prefect-home" / "prefect.db")) as db:
        logs = [message for (message,) in db.execute("SELECT message FROM log ORDER BY timestamp")]
    assert any("0 of 2 rollouts verified, 2 failed, no verified rollout to average" in m for m in logs), logs
    assert [m for m in logs if "None" in m] == []

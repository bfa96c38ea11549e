"""`rollouts collect` with blocks, from the shell against a real `prefect server start`: the default `--out` gives
way to the storage block, `--parallel auto` works under a model block's connection limit, and the flow run's logs
carry one line per shard and the output places, with no "None" in any message."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import math_rows, write_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def blocks(live_prefect, sim, tmp_path_factory) -> Path:
    """A ModelEndpoint to the simulated server and a RolloutStorage on a local folder, saved through the API."""
    from prefect.settings import temporary_settings

    from blocks import ModelEndpoint, RolloutStorage

    place = tmp_path_factory.mktemp("team-runs")
    with temporary_settings(updates={"api.url": live_prefect.api_url}):
        ModelEndpoint(base_url=sim.url, model="sim-model", connection_limit=16).save("sim", overwrite=True)
        RolloutStorage(url=str(place)).save("local-runs", overwrite=True)
    return place


def flow_run_logs(api_url: str, run_name: str, last: str = "training files", timeout_s: float = 30) -> list[str]:
    """The messages of a flow run's logs, once one containing `last` arrived (the API persists logs in batches)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.settings import temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings(updates={"api.url": api_url}), get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
            messages = [log.message for log in sorted(logs, key=lambda log: log.timestamp)]
            if any(last in m for m in messages) or time.monotonic() > deadline:
                return messages
            time.sleep(1)


@pytest.mark.parametrize("extra", [(), ("--parallel", "auto")], ids=["default-out", "parallel-auto"])
def test_blocks_from_the_shell_with_the_default_out(tmp_path, blocks, live_prefect, extra):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(6))
    name = f"shell-{len(extra)}"
    result = rollouts(
        "collect",
        "prompts.jsonl",
        "--model-block",
        "sim",
        "--storage-block",
        "local-runs",
        "--num-repeats",
        "2",
        "--shard-size",
        "2",
        "--run-name",
        name,
        "--no-progress",
        *extra,
        api_url=live_prefect.api_url,
        env={"PREFECT_LOGGING_LEVEL": ""},  # as a user has it: the command's own default (INFO) applies
        cwd=src.parent,
    )
    assert result.code == 0, result.err[-3000:]
    assert "Still processing" not in result.err and "conflicts" not in result.err
    manifest = json.loads((blocks / name / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["counts"]["rollouts_ok"] == 12
    assert not (tmp_path / "runs").exists()  # not the working directory: the block's place
    messages = flow_run_logs(live_prefect.api_url, name)
    shard_lines = [m for m in messages if m.startswith("shard ")]
    assert len(shard_lines) == 3 and "(3 of 3 shards): 12/12 rollouts" in shard_lines[-1], messages
    assert all("rollouts/s, mean reward" in m for m in shard_lines)
    assert any(m.startswith(f"rl training files: {blocks / name}/train/rl/") for m in messages), messages
    assert not [m for m in messages if "None" in m]

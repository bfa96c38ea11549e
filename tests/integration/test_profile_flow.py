"""The profile stage in a real flow run: the run report and charts on disk, and as artifacts the Prefect UI renders."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from prefect.artifacts import Artifact

from flows.collect import collect_rollouts
from rollouts.config import CollectConfig
from rollouts.report.svg import NAMESPACE
from tests.integration.conftest import math_rows, write_jsonl

SVG = f"{{{NAMESPACE}}}"  # an SVG element's tag, as ElementTree reads it

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server", "board")]


def test_flow_publishes_the_run_report_with_embedded_charts(tmp_path: Path, sim) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(12))
    config = CollectConfig(
        input=str(src),
        out=str(tmp_path / "runs"),
        model_url=sim.url,
        model="sim-model",
        num_repeats=4,
        parallel=8,
        shard_size=6,
        temperature=0.5,
        seed=3,
        run_name="report",
    )
    summary = collect_rollouts(config)
    folder = Path(summary.run_url) / "profile"
    report = (folder / "report.md").read_text()
    profile = json.loads((folder / "profile.json").read_text())
    for name in ("latency_cdf.svg", "rewards.svg"):
        assert f"]({name})" in report and ET.fromstring((folder / name).read_bytes()).tag == SVG + "svg"
    # 48 rollouts at 5 ms end within one timeline window: one point per line, so no throughput chart, the table instead
    assert len(profile["timeline"]) == 1 and not (folder / "throughput.svg").exists()
    assert "throughput.svg" not in report and "## Timeline (1 windows)" in report
    assert profile["rollouts"] == 48 and [r["k"] for r in profile["pass_at_k"]] == [1, 2, 4]
    artifact = Artifact.get("run-report")
    assert artifact is not None and "## Latency (ms)" in artifact.data and "| math | 4 |" in artifact.data
    embedded = artifact.data.split("](data:image/svg+xml;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(embedded) == (folder / "latency_cdf.svg").read_bytes()
    assert Artifact.get("pass-at-k") is not None

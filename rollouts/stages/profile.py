"""The profile stage: compute the run's profile, write its files and charts, the run report, and the artifacts to
publish.

The Prefect UI (checked in headless Chromium against `prefect server start`, both its UIs) renders markdown tables,
`![](data:image/svg+xml;base64,...)` images and images from http(s) URLs the browser can reach. A run's files often sit
where a browser cannot reach them (a local path on a worker, s3://), so the artifact embeds the charts as data URIs
and the `report.md` file next to them links them by name.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rollouts.quality import markdown_section
from rollouts.report.charts import profile_charts
from rollouts.report.markdown import header, row
from rollouts.report.metrics import (
    ProfileOptions,
    csv_text,
    histogram_markdown,
    profile_frame,
    read_run_frame,
    timing_rows,
    write_profile,
)
from rollouts.report.profiler import COLUMNS, TOP_ROWS, read_function_stats
from rollouts.run import read_records
from rollouts.stages.batched import batch_timeline, live_tokens
from rollouts.storage import Store
from rollouts.tokens import contiguity_metrics
from rollouts.tune.aimd import read_trace

TIMELINE_ROWS = 30  # the report lists at most this many windows; timeline.csv has them all


@dataclass
class Artifact:
    """One Prefect artifact, described without Prefect: the task publishes it."""

    kind: Literal["markdown", "table"]
    key: str
    description: str
    markdown: str = ""
    table: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ProfileResult:
    profile: dict[str, Any]
    files: list[str]
    artifacts: list[Artifact]


def profile_run(store: Store, options: ProfileOptions | None = None) -> ProfileResult:
    """Read the run's rows (and controller trace, and function profile), write `profile/`, return what to publish."""
    if options is not None and options.batch_discount is not None:  # live fallback calls cost the list price
        live = live_tokens(store)
        options = dataclasses.replace(options, live_tokens=(live["input"], live["output"]))
    profile = profile_frame(read_run_frame(store, flat=True), options, read_trace(store))
    functions = read_function_stats(store)
    if functions is not None:
        stats, parts = functions
        rows = stats.table()
        store.write_bytes(csv_text(rows, COLUMNS).encode(), "profile", "functions.csv")
        profile["functions"] = {"processes": parts, "clock_seconds": stats.clock_seconds, "top": rows[:TOP_ROWS]}
    if options is not None and options.tokens:
        records = (
            row
            for path in store.glob("rollouts/*.jsonl")
            for row in read_records(store, "rollouts", path.rsplit("/", 1)[-1])
        )
        metrics = contiguity_metrics(records)
        profile["contiguity"] = {
            **metrics.model_dump(),
            "summary": metrics.summary(),
            "markdown": metrics.to_markdown(),
        }
    batches = batch_timeline(store)
    if batches:
        profile["batches"] = batches
    health = store.read_json("quality", "summary.json")  # written by the health stage, just before this one
    if health is not None:
        profile["health"] = {"unhealthy_fraction": health["unhealthy_fraction"], "markdown": markdown_section(health)}
    files = write_profile(store, profile)
    charts = profile_charts(profile)
    for name, chart in charts.items():
        store.write_bytes(chart, "profile", name)
        files.append(store.url("profile", name))
    if functions is not None:
        files.append(store.url("profile", "functions.csv"))
    store.write_bytes(
        report_markdown(profile, {name: name for name in charts}, store.root).encode(), "profile", "report.md"
    )
    files.append(store.url("profile", "report.md"))
    inline = {name: "data:image/svg+xml;base64," + base64.b64encode(svg).decode() for name, svg in charts.items()}
    return ProfileResult(profile=profile, files=files, artifacts=artifacts(profile, inline, store.root))


def artifacts(profile: dict[str, Any], images: dict[str, str], run_url: str) -> list[Artifact]:
    out = [
        Artifact(
            "markdown", "run-report", f"Run report of {run_url}", markdown=report_markdown(profile, images, run_url)
        ),
        Artifact("table", "rollout-timings", f"Per-rollout timings (ms) of {run_url}", table=timing_rows(profile)),
        Artifact(
            "table",
            "rollout-throughput",
            "Throughput of the generation stage",
            table=[
                {
                    k: profile[k]
                    for k in ("rollouts", "failed", "rollouts_per_s", "output_tokens_per_s", "generation_window_s")
                }
            ],
        ),
        Artifact(
            "markdown", "reward-histogram", "Reward histogram per environment", markdown=histogram_markdown(profile)
        ),
    ]
    if profile["failures_by_type"]:
        out.append(Artifact("table", "rollout-failures", "Failures by error type", table=profile["failures_by_type"]))
    if profile["pass_at_k"]:
        out.append(
            Artifact("table", "pass-at-k", "pass@k, pass^k and mean@k per environment", table=profile["pass_at_k"])
        )
    if "batches" in profile:
        out.append(
            Artifact(
                "table", "batch-timeline", "Provider batches: submitted, in progress, ended", table=profile["batches"]
            )
        )
    if "contiguity" in profile:
        out.append(
            Artifact(
                "markdown",
                "token-contiguity",
                "Token contiguity across model calls (--return-tokens)",
                markdown=profile["contiguity"]["markdown"],
            )
        )
    if "functions" in profile:
        out.append(
            Artifact(
                "table",
                "function-profile",
                "Functions by total wall time (seconds), wall and CPU clocks",
                table=profile["functions"]["top"],
            )
        )
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str], headers: list[str] | None = None) -> list[str]:
    if not rows:
        return []
    right = [isinstance(rows[0].get(c), int | float) for c in columns]
    lines = header(headers or columns, right)
    lines += [row([_cell(r.get(c)) for c in columns]) for r in rows]
    return lines + [""]


def _cost_text(cost: dict[str, Any] | None) -> str:
    if not cost:
        return "– (give --price-input / --price-output)"
    text = (
        f"{cost['total']:.4f} ({cost['input']:.4f} input at {cost['price_input_per_m']}/M, "
        f"{cost['output']:.4f} output at {cost['price_output_per_m']}/M"
    )
    if cost.get("batch_discount") is not None:
        live = cost["live_fallback_tokens"]
        text += f"; batch price, {cost['batch_discount']:g} of list: {cost['list_total']:.4f} at list price"
        if live["input"] or live["output"]:
            text += f"; live fallback calls at list price: {live['input']:,} in, {live['output']:,} out"
    return text + ")"


def _batch_section(batches: list[dict[str, Any]]) -> list[str]:
    """The batch timeline: one row per provider batch, times in seconds after it was submitted."""
    rows = [
        {
            **batch,
            "submitted": datetime.fromtimestamp(batch["submitted_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            if batch["submitted_at"]
            else None,
        }
        for batch in batches
    ]
    lines = [f"## Batches ({len(rows)})", ""]
    lines += [
        "Batch mode: per provider batch, when it was submitted (UTC) and the seconds until it was in progress and "
        "until it ended. A turn is one model call of every rollout waiting on the model; a batch `r<n>-*` with n > 0 "
        "sends again what an earlier batch of its turn did not answer.",
        "",
    ]
    columns = [
        "shard",
        "turn",
        "batch",
        "batch_id",
        "status",
        "requests",
        "completed",
        "failed",
        "submitted",
        "in_progress_after_s",
        "ended_after_s",
    ]
    headers = [*columns[:8], "submitted", "in progress after (s)", "ended after (s)"]
    return lines + _table(rows, columns, headers)


def report_markdown(profile: dict[str, Any], images: dict[str, str], run_url: str) -> str:
    """The run report a person opens first: headline figures, charts, latency, rewards, errors, timeline, functions."""
    total = profile["rollouts"] + profile["failed"]
    tokens, cost = profile["tokens"], profile["cost"]
    lines = ["# Run report", "", f"`{run_url}`", ""]
    headline = [
        (
            "rollouts",
            f"{profile['rollouts']:,} ok, {profile['failed']:,} failed"
            + (f" ({profile['failed'] / total:.1%})" if total else "")
            + f", {profile['retries']:,} retries",
        ),
        ("generation window", f"{_cell(profile['generation_window_s'])} s"),
        (
            "throughput",
            f"{_cell(profile['rollouts_per_s'])} rollouts/s, {_cell(profile['output_tokens_per_s'])} output tokens/s",
        ),
        (
            "tokens",
            f"{tokens['input']:,} in ({tokens['cached']:,} cached), {tokens['output']:,} out "
            f"({tokens['reasoning']:,} reasoning)"
            + (
                ""
                if tokens["cached_reported"] or tokens["reasoning_reported"]
                else "; the endpoint reports no cached or reasoning counts"
            ),
        ),
        ("estimated cost", _cost_text(cost)),
    ]
    lines += ["| run | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in headline], ""]
    if "throughput.svg" in images:
        lines += ["## Throughput over time", "", f"![throughput over time]({images['throughput.svg']})", ""]
    lines += ["## Latency (ms)", ""]
    lines += _table(profile["latency"], ["scope", "name", "count", "p50", "p90", "p99", "max"])
    if any(row.get("estimated") for row in profile["latency"]):
        lines += ["Per model call and per tool figures are the rollout's totals shared evenly between its calls.", ""]
    if "latency_cdf.svg" in images:
        lines += [f"![latency CDF]({images['latency_cdf.svg']})", ""]
    lines += ["## Rewards", ""]
    lines += _table(
        [{"env": env, "rollouts": s["count"], "mean reward": s["mean"]} for env, s in profile["rewards"].items()],
        ["env", "rollouts", "mean reward"],
    )
    if profile["pass_at_k"]:
        threshold = profile["pass_at_k"][0]["threshold"]
        lines += [
            f"pass@k and pass^k count a rollout as passed when its reward is at least {threshold:g} "
            "(unbiased estimators over the n scored rollouts of each prompt).",
            "",
        ]
        lines += _table(
            profile["pass_at_k"],
            ["env", "k", "n_min", "n_max", "prompts", "pass_at_k", "pass_pow_k", "mean_at_k"],
            ["env", "k", "n min", "n max", "prompts", "pass@k", "pass^k", "mean@k"],
        )
    if "rewards.svg" in images:
        lines += [f"![reward histogram per environment]({images['rewards.svg']})", ""]
    lines += ["## Errors", ""]
    lines += _table(profile["failures_by_type"], ["type", "status_code", "stage", "count"]) or [
        "No failed rollouts.",
        "",
    ]
    timeline = profile["timeline"]
    if timeline:
        lines += [f"## Timeline ({len(timeline)} windows)", ""]
        shown = timeline if len(timeline) <= TIMELINE_ROWS else timeline[:: -(-len(timeline) // TIMELINE_ROWS)]
        columns = ["t_s", "rollouts_per_s", "output_tokens_per_s", "in_flight_mean", "in_flight_max", "errors"]
        if any(row["parallel"] is not None for row in timeline):
            columns.append("parallel")
        lines += _table(shown, columns)
        if len(shown) < len(timeline):
            lines += [f"Every {len(timeline) // len(shown)}th window shown; `timeline.csv` has all of them.", ""]
    if "functions" in profile:
        info = profile["functions"]
        seconds = ", ".join(f"{clock} {s:.1f} s" for clock, s in info["clock_seconds"].items())
        lines += [
            "## Functions (`--profile`)",
            "",
            f"yappi, coroutine-aware, alternating clocks ({seconds} over {info['processes']} process(es)); "
            "times in seconds, sorted by total wall time; `functions.csv` has every function.",
            "",
        ]
        lines += _table(
            info["top"][:15], ["function", "module", "wall_ncall", "wall_ttot", "wall_tavg", "cpu_ttot", "cpu_tavg"]
        )
    if profile.get("batches"):
        lines += _batch_section(profile["batches"])
    if profile.get("health"):
        lines += [profile["health"]["markdown"], ""]
    lines += [
        "## Files",
        "",
        "`profile/`: profile.json, timings.csv, latency.csv, timeline.csv, errors.csv, "
        "pass_at_k.csv, reward_histogram.md, the charts (SVG) and this report.",
        "",
    ]
    return "\n".join(lines)

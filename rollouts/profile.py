"""Profile of a run: timing percentiles, throughput, failures by type and reward histograms, from the run's files."""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from rollouts.storage import Store, is_local

PROFILE_SCHEMA = {
    "status": pl.String,
    "reward": pl.Float64,
    "agent_ref": pl.Struct({"name": pl.String}),
    "timings": pl.Struct({name: pl.Float64 for name in
                          ("queue_ms", "model_ms", "tool_ms", "generate_ms", "verify_ms", "total_ms", "started_at", "finished_at")}),
    "response": pl.Struct({"usage": pl.Struct({"input_tokens": pl.Int64, "output_tokens": pl.Int64})}),
    "error": pl.Struct({"type": pl.String, "status_code": pl.Int64, "stage": pl.String}),
    "attempts": pl.Int64,
}
TIMINGS = ("queue_ms", "model_ms", "generate_ms", "verify_ms", "total_ms")
HISTOGRAM_BINS = 10


def read_run_frame(store: Store, folders: tuple[str, ...] = ("rollouts", "failures")) -> pl.DataFrame:
    """The columns the profile needs, read with an explicit schema (never inferred)."""
    frames = []
    for folder in folders:
        for path in store.glob(f"{folder}/*.jsonl"):
            if is_local(store.fs):
                frames.append(pl.scan_ndjson(path, schema=PROFILE_SCHEMA))
            else:
                with store.fs.open(path, "rb") as fh:
                    data = fh.read()
                if data:
                    frames.append(pl.read_ndjson(io.BytesIO(data), schema=PROFILE_SCHEMA).lazy())
    if not frames:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    return pl.concat(frames).collect()


def _histogram(rewards: pl.Series) -> list[dict[str, Any]]:
    if rewards.len() == 0:
        return []
    low, high = float(rewards.min()), float(rewards.max())
    if low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    if high == low:
        return [{"lo": low, "hi": high, "count": rewards.len()}]
    width = (high - low) / HISTOGRAM_BINS
    index = ((rewards - low) / width).floor().clip(0, HISTOGRAM_BINS - 1).cast(pl.Int64)
    counts = index.value_counts()
    by_bin = dict(zip(counts[index.name].to_list(), counts["count"].to_list(), strict=True))
    return [{"lo": round(low + i * width, 6), "hi": round(low + (i + 1) * width, 6), "count": int(by_bin.get(i, 0))}
            for i in range(HISTOGRAM_BINS)]


def profile_frame(frame: pl.DataFrame) -> dict[str, Any]:
    ok = frame.filter(pl.col("status") == "ok")
    failed = frame.filter(pl.col("status") != "ok")
    timings = ok.select(pl.col("timings").struct.unnest())
    percentiles = {}
    for name in TIMINGS:
        column = timings[name].drop_nulls() if name in timings.columns else pl.Series([], dtype=pl.Float64)
        percentiles[name] = {q: (round(float(column.quantile(v)), 3) if column.len() else None)
                             for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    all_timings = frame.select(pl.col("timings").struct.unnest())
    window = None
    if frame.height and all_timings["started_at"].drop_nulls().len():
        window = float(all_timings["finished_at"].max() - all_timings["started_at"].min())
    usage = ok.select(pl.col("response").struct.field("usage").struct.unnest())
    out_tokens = int(usage["output_tokens"].sum() or 0) if ok.height else 0
    in_tokens = int(usage["input_tokens"].sum() or 0) if ok.height else 0
    errors = failed.select(pl.col("error").struct.unnest())
    by_type = (errors.group_by("type", "status_code", "stage").len().sort("len", descending=True).to_dicts()
               if failed.height else [])
    envs: dict[str, Any] = {}
    with_env = ok.with_columns(env=pl.col("agent_ref").struct.field("name"))
    for env in sorted(with_env["env"].drop_nulls().unique().to_list()):
        rewards = with_env.filter(pl.col("env") == env)["reward"].drop_nulls()
        envs[env] = {"count": rewards.len(), "mean": round(float(rewards.mean()), 6) if rewards.len() else None,
                     "histogram": _histogram(rewards)}
    rate = ok.height / window if window else None
    return {
        "rollouts": ok.height,
        "failed": failed.height,
        "generation_window_s": round(window, 3) if window else None,
        "rollouts_per_s": round(rate, 2) if rate else None,
        "output_tokens": out_tokens,
        "input_tokens": in_tokens,
        "output_tokens_per_s": round(out_tokens / window, 1) if window else None,
        "timings_ms": percentiles,
        "failures_by_type": [{"type": r["type"], "status_code": r["status_code"], "stage": r["stage"], "count": r["len"]} for r in by_type],
        "rewards": envs,
    }


def histogram_markdown(profile: dict[str, Any]) -> str:
    lines = ["# Reward histogram", ""]
    for env, stats in profile["rewards"].items():
        lines += [f"## {env}: {stats['count']} rollouts, mean reward {stats['mean']}", "", "```"]
        peak = max((b["count"] for b in stats["histogram"]), default=0) or 1
        for b in stats["histogram"]:
            bar = "#" * round(40 * b["count"] / peak)
            lines.append(f"[{b['lo']:>6.2f}, {b['hi']:>6.2f})  {b['count']:>8}  {bar}")
        lines += ["```", ""]
    if not profile["rewards"]:
        lines.append("No verified rollouts.")
    return "\n".join(lines)


def timing_rows(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": name, **values} for name, values in profile["timings_ms"].items()]


def write_profile(store: Store, profile: dict[str, Any]) -> list[str]:
    store.write_json(profile, "profile", "profile.json")
    store.write_bytes(histogram_markdown(profile).encode(), "profile", "reward_histogram.md")
    rows = timing_rows(profile)
    csv = "stage,p50,p90,p99\n" + "".join(f"{r['stage']},{r['p50']},{r['p90']},{r['p99']}\n" for r in rows)
    store.write_bytes(csv.encode(), "profile", "timings.csv")
    return [store.url("profile", name) for name in ("profile.json", "reward_histogram.md", "timings.csv")]

"""Profile of a run from its rollout rows: latency percentiles, a throughput timeline, errors, tokens, cost, pass@k."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, cast

import polars as pl

from rollouts.report.histogram import histogram
from rollouts.schema import Spec, row_schema
from rollouts.storage import Store, is_local

_TIMING_FIELDS = (
    "queue_ms",
    "model_ms",
    "tool_ms",
    "generate_ms",
    "verify_ms",
    "total_ms",
    "started_at",
    "finished_at",
)
_USAGE: Spec = {
    "input_tokens": True,
    "output_tokens": True,
    "input_tokens_details": {"cached_tokens": True},
    "output_tokens_details": {"reasoning_tokens": True},
}
_PROFILE_FIELDS: Spec = {
    "status": True,
    "reward": True,
    "agent_ref": {"name": True},
    "_ng_task_index": True,
    # Per-call detail (model_calls_ms, tool_calls); rows without it get per-call figures estimated from the totals.
    "timings": {**dict.fromkeys(_TIMING_FIELDS, True), "model_calls_ms": True, "tool_calls": True},
    "response": {"usage": _USAGE},
    "error": {"type": True, "status_code": True, "stage": True},
    "attempts": True,
}
PROFILE_SCHEMA = row_schema(_PROFILE_FIELDS)
# The output items' types and tool names, read only for runs whose rollouts called tools without per-call timings:
# typing them costs ~60 % more read time (250,000 rollouts: 4.1 -> 6.7 s).
PROFILE_SCHEMA_WITH_OUTPUT = row_schema(
    {**_PROFILE_FIELDS, "response": {"usage": _USAGE, "output": {"type": True, "name": True}}}
)
STAGES = ("queue_ms", "model_ms", "tool_ms", "generate_ms", "verify_ms", "total_ms")
TIMINGS = STAGES  # the stages reported in timings.csv and the timing table artifact
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
WINDOW_S = 10.0
CDF_POINTS = 101
TOOL_OUTPUT = "function_call_output"


@dataclass(frozen=True)
class ProfileOptions:
    """What the profile needs beyond the rows: prices per million tokens and the reward that counts as a pass."""

    price_input: float | None = None
    price_output: float | None = None
    pass_threshold: float = 1.0
    window_s: float = WINDOW_S
    tokens: bool = False  # the run asked for token ids: check every rollout's contiguity
    batch_discount: float | None = None  # batch mode: the batch price as a fraction of the list price
    live_tokens: tuple[int, int] = (0, 0)  # batch mode: input and output tokens of live fallback calls (list price)

    @classmethod
    def from_config(cls, config: Any) -> ProfileOptions:
        return cls(
            price_input=config.profiling.price_input,
            price_output=config.profiling.price_output,
            tokens=config.endpoint.return_tokens,
            batch_discount=config.batch.discount if config.batch.enabled else None,
        )


def read_run_frame(
    store: Store,
    folders: tuple[str, ...] = ("rollouts", "failures"),
    *,
    with_output: bool | None = None,
    flat: bool = False,
) -> pl.DataFrame:
    """The columns the profile needs, read with an explicit schema (never inferred); with `flat`, already one plain
    column per figure (`_flat`), which is what the profile computes on.

    `with_output=None` reads the output items' types only when some rollout called tools and its row lacks per-call
    timings: without tool calls a rollout made exactly one model call, so nothing needs estimating.
    Files are read `READ_BATCH` at a time and, with `flat`, flattened batch by batch: a run's nested rows are never
    all in memory at once. 1M rollouts: peak 1,163 MB reading and profiling in one frame, see the commit for after.
    """
    if with_output is None:
        frame = read_run_frame(store, folders, with_output=False, flat=flat)
        timings = frame if flat else frame["timings"].struct.unnest()
        needs = (timings["tool_ms"].fill_null(0) > 0) & timings["tool_calls"].is_null()
        return read_run_frame(store, folders, with_output=True, flat=flat) if needs.any() else frame
    schema = PROFILE_SCHEMA_WITH_OUTPUT if with_output else PROFILE_SCHEMA
    paths = [path for folder in folders for path in store.glob(f"{folder}/*.jsonl")]
    parts: list[pl.DataFrame] = []
    for start in range(0, len(paths), READ_BATCH):
        frames = []
        for path in paths[start : start + READ_BATCH]:
            if is_local(store.fs):
                frames.append(pl.scan_ndjson(path, schema=schema))
            else:
                with store.fs.open(path, "rb") as fh:
                    data = fh.read()
                if data:
                    frames.append(pl.read_ndjson(io.BytesIO(data), schema=schema).lazy())
        if frames:
            batch = pl.concat(frames)
            parts.append((batch.select(_flat_columns(with_output)) if flat else batch).collect())
    if not parts:
        empty = pl.DataFrame(schema=schema)
        return empty.select(_flat_columns(with_output)) if flat else empty
    return pl.concat(parts, rechunk=False)


READ_BATCH = 64  # files per read


def summary(values: pl.Series) -> dict[str, Any]:
    """count, p50, p90, p99 and max of a series of milliseconds (nulls ignored)."""
    s = values.drop_nulls()
    if s.len() == 0:
        return {"count": 0, **{q: None for q, _ in QUANTILES}, "max": None}
    return {
        "count": s.len(),
        # a non-empty numeric series: its quantiles and max are numbers (polars types them as any literal or None)
        **{q: round(float(cast(float, s.quantile(v))), 3) for q, v in QUANTILES},
        "max": round(float(cast(float, s.max())), 3),
    }


def _cdf(values: pl.Series) -> list[float]:
    """The values at quantiles 0, 0.01, ..., 1 (nearest rank), from one sort."""
    s = values.drop_nulls().sort()
    if s.len() == 0:
        return []
    last = s.len() - 1
    return [round(float(v), 3) for v in s.gather([round(i * last / (CDF_POINTS - 1)) for i in range(CDF_POINTS)])]


def _flat_columns(with_output: bool) -> list[pl.Expr]:
    """One plain column per figure, from the nested rows read with PROFILE_SCHEMA(_WITH_OUTPUT)."""
    usage = pl.col("response").struct.field("usage")
    if with_output:
        output = pl.col("response").struct.field("output")
        starts = (pl.element() != TOOL_OUTPUT) & (pl.element().shift(1).fill_null(TOOL_OUTPUT) == TOOL_OUTPUT)
        calls = output.list.eval(pl.element().struct.field("type")).list.eval(starts).list.sum()
        names = output.list.eval(
            pl.element().filter(pl.element().struct.field("type") == "function_call").struct.field("name")
        )
    else:  # read without output items: no rollout ran tools, so each made one model call
        calls = pl.when(pl.col("response").is_not_null()).then(1)
        names = pl.lit([], dtype=pl.List(pl.String))
    return [
        pl.col("status").cast(pl.Categorical),
        pl.col("reward"),
        pl.col("_ng_task_index").alias("task"),
        pl.col("agent_ref").struct.field("name").cast(pl.Categorical).alias("env"),
        *[pl.col("timings").struct.field(name) for name in (*_TIMING_FIELDS, "model_calls_ms", "tool_calls")],
        usage.struct.field("input_tokens"),
        usage.struct.field("output_tokens"),
        usage.struct.field("input_tokens_details").struct.field("cached_tokens"),
        usage.struct.field("output_tokens_details").struct.field("reasoning_tokens"),
        calls.cast(pl.Int64).alias("model_calls"),
        names.alias("tool_names"),
        pl.col("error").struct.field("type").cast(pl.Categorical).alias("error_type"),
        pl.col("error").struct.field("status_code"),
        pl.col("error").struct.field("stage").cast(pl.Categorical),
        pl.col("attempts"),
    ]


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per rollout with plain columns (a frame read with `flat=True` is that already)."""
    if "response" not in frame.columns:
        return frame
    response = cast(pl.Struct, frame.schema["response"])  # a nested frame's response column is a struct
    return frame.select(_flat_columns("output" in {f.name for f in response.fields}))


def latency_rows(rows: pl.DataFrame, ok: pl.DataFrame | None = None) -> list[dict[str, Any]]:
    """p50/p90/p99/max per stage, per model call, per tool and per environment (successful rollouts: `ok`, when the
    caller has them already)."""
    ok = rows.filter(pl.col("status") == "ok") if ok is None else ok
    out = [{"scope": "stage", "name": name, **summary(ok[name])} for name in STAGES]
    exact = ok["model_calls_ms"].explode().drop_nulls()
    if exact.len():
        out.append({"scope": "model_call", "name": "all", **summary(exact), "estimated": False})
    else:  # the rollout's model time shared evenly between its calls
        per_call = (
            ok.select("model_calls", "model_ms")
            .filter(pl.col("model_calls") > 0)
            .select((pl.col("model_ms") / pl.col("model_calls")).repeat_by(pl.col("model_calls")).alias("ms"))
            .explode("ms")
        )
        out.append({"scope": "model_call", "name": "all", **summary(per_call["ms"]), "estimated": True})
    calls = ok.select("tool_calls").explode("tool_calls").drop_nulls().unnest("tool_calls")
    estimated = calls.height == 0
    if estimated:  # a rollout's tool time shared evenly between the tools it called
        with_tools = ok.select("tool_ms", "tool_names").filter(
            (pl.col("tool_ms") > 0) & (pl.col("tool_names").list.len() > 0)
        )
        calls = with_tools.select(
            pl.col("tool_names").alias("name"), (pl.col("tool_ms") / pl.col("tool_names").list.len()).alias("ms")
        ).explode("name")
    for name in sorted(calls["name"].drop_nulls().unique().to_list()):
        out.append(
            {
                "scope": "tool",
                "name": name,
                **summary(calls.filter(pl.col("name") == name)["ms"]),
                "estimated": estimated,
            }
        )
    for env in sorted(ok["env"].drop_nulls().unique().to_list()):
        of_env = ok.select("env", "model_ms", "verify_ms", "total_ms").filter(pl.col("env") == env)
        for stage in ("model_ms", "verify_ms", "total_ms"):
            out.append({"scope": "environment", "name": f"{env}/{stage}", **summary(of_env[stage])})
    return out


def window_for(span_s: float, window_s: float = WINDOW_S) -> float:
    """`window_s`, or for a run shorter than ten of them a round 1, 2 or 5 s (at least ten points to look at)."""
    if span_s >= 10 * window_s:
        return window_s
    return next((w for w in (0.5, 1.0, 2.0, 5.0) if span_s / w <= 20), window_s)


def timeline_rows(
    rows: pl.DataFrame, window_s: float = WINDOW_S, parallel: pl.DataFrame | None = None
) -> list[dict[str, Any]]:
    """Per window: rollouts/s, output tokens/s, rollouts in flight (mean and max), errors and the --parallel limit."""
    spans = rows.select("started_at", "finished_at", "status", "output_tokens").filter(
        pl.col("started_at").is_not_null() & pl.col("finished_at").is_not_null()
    )
    if spans.height == 0:
        return []
    t0, t_end = float(spans["started_at"].min()), float(spans["finished_at"].max())  # type: ignore[arg-type]
    window_s = window_for(t_end - t0, window_s)
    count = max(1, math.ceil((t_end - t0) / window_s))
    done = spans.with_columns(win=((pl.col("finished_at") - t0) / window_s).floor().cast(pl.Int64).clip(0, count - 1))
    per_window = done.group_by("win").agg(
        ok=(pl.col("status") == "ok").sum(),
        errors=(pl.col("status") != "ok").sum(),
        tokens=pl.col("output_tokens").filter(pl.col("status") == "ok").sum(),
    )
    events = (
        pl.concat(
            [
                spans.select(t=pl.col("started_at"), delta=pl.lit(1, pl.Int64)),
                spans.select(t=pl.col("finished_at"), delta=pl.lit(-1, pl.Int64)),
                pl.DataFrame({"t": [t0 + i * window_s for i in range(count)], "delta": [0] * count}),
            ]
        )
        .sort("t", "delta")
        .with_columns(
            level=pl.col("delta").cum_sum(),
            span=(pl.col("t").shift(-1) - pl.col("t")).fill_null(0.0),
            win=((pl.col("t") - t0) / window_s).floor().cast(pl.Int64).clip(0, count - 1),
        )
    )
    flight = events.group_by("win").agg(area=(pl.col("level") * pl.col("span")).sum(), peak=pl.col("level").max())
    table = (
        pl.DataFrame({"win": list(range(count))})
        .join(per_window, on="win", how="left")
        .join(flight, on="win", how="left")
    )
    limits = _parallel_at(parallel, [t0 + (i + 1) * window_s for i in range(count)]) if parallel is not None else None
    out = []
    for row in table.sort("win").iter_rows(named=True):
        i = row["win"]
        length = min(window_s, t_end - (t0 + i * window_s)) or window_s
        out.append(
            {
                "t_s": round(i * window_s, 3),
                "window_s": round(length, 3),
                "rollouts": int(row["ok"] or 0),
                "rollouts_per_s": round((row["ok"] or 0) / length, 3),
                "output_tokens_per_s": round((row["tokens"] or 0) / length, 1),
                "in_flight_mean": round((row["area"] or 0.0) / length, 2),
                "in_flight_max": int(row["peak"] or 0),
                "errors": int(row["errors"] or 0),
                "parallel": limits[i] if limits else None,
            }
        )
    return out


def _parallel_at(trace: pl.DataFrame, times: list[float]) -> list[int | None]:
    """The limit in force at each time, summed over the collector processes that recorded one."""
    result: list[int | None] = []
    by_process = {key[0]: part.sort("t") for key, part in trace.group_by("process")} if trace.height else {}
    for t in times:
        total, seen = 0, False
        for part in by_process.values():
            before = part.filter(pl.col("t") <= t)
            if before.height:
                total, seen = total + int(before["limit"][-1]), True
        result.append(total if seen else None)
    return result


def pass_at_k_rows(rows: pl.DataFrame, threshold: float = 1.0) -> list[dict[str, Any]]:
    """Unbiased pass@k = 1 - C(n-c, k)/C(n, k), pass^k = C(c, k)/C(n, k) and mean@k per environment.

    n is the number of scored rollouts of a prompt and c those with reward >= `threshold`; a prompt enters the
    figures for k only when n >= k. mean@k (the expected mean reward of k samples) equals the mean reward for any k.
    """
    # A prompt (task) has one environment: grouped on the task alone, streamed, with the environment as a category
    # code, the run is one small row per prompt (1M prompts: +121 MB, where grouping a filtered copy of the frame on
    # (env, task) took +330 MB).
    by_nc = (
        rows.lazy()
        .filter((pl.col("status") == "ok") & pl.col("reward").is_not_null() & pl.col("task").is_not_null())
        .select("task", "reward", pl.col("env").cast(pl.Categorical))
        .group_by("task")
        .agg(
            env=pl.col("env").first(), n=pl.len(), c=(pl.col("reward") >= threshold).sum(), mean=pl.col("reward").mean()
        )
        .group_by("env", "n", "c")
        .agg(prompts=pl.len(), mean_sum=pl.col("mean").sum())
        .collect(engine="streaming")
        .with_columns(pl.col("env").cast(pl.String))
    )
    out = []
    for env in sorted(by_nc["env"].drop_nulls().unique().to_list()):
        part = by_nc.filter(pl.col("env") == env)
        n_max = int(part["n"].max())  # type: ignore[arg-type]
        ks = sorted({2**i for i in range(n_max.bit_length()) if 2**i <= n_max} | {n_max})
        for k in ks:
            used = part.filter(pl.col("n") >= k)
            prompts = int(used["prompts"].sum())
            at_k = pow_k = mean = 0.0
            for n, c, count, mean_sum in used.select("n", "c", "prompts", "mean_sum").iter_rows():
                total = math.comb(n, k)
                at_k += count * (1 - math.comb(n - c, k) / total)
                pow_k += count * math.comb(c, k) / total
                mean += mean_sum
            out.append(
                {
                    "env": env,
                    "k": k,
                    # an integer count column: min and max are ints (polars types them as any literal)
                    "n_min": int(cast(int, used["n"].min())),
                    "n_max": int(cast(int, used["n"].max())),
                    "prompts": prompts,
                    "pass_at_k": round(at_k / prompts, 6),
                    "pass_pow_k": round(pow_k / prompts, 6),
                    "mean_at_k": round(mean / prompts, 6),
                    "threshold": threshold,
                }
            )
    return out


def profile_frame(
    frame: pl.DataFrame, options: ProfileOptions | None = None, parallel: pl.DataFrame | None = None
) -> dict[str, Any]:
    options = options or ProfileOptions()
    rows = _flat(frame)
    del frame  # the caller's read frame, nested: freed once flattened (a 1M-rollout run holds one copy, not two)
    is_ok = (rows["status"] == "ok").fill_null(False)
    everything_ok = bool(is_ok.all())
    ok = rows if everything_ok else rows.filter(is_ok)  # no copy of the whole run when nothing failed
    failed = rows.clear() if everything_ok else rows.filter(~is_ok)
    latency = latency_rows(rows, ok)
    window = None
    if rows.height and rows["started_at"].drop_nulls().len():
        # epoch seconds (Float64 columns): max and min are floats (polars types them as any literal)
        window = float(cast(float, rows["finished_at"].max()) - cast(float, rows["started_at"].min()))
    tokens = {
        name: int(ok[column].sum() or 0)
        for name, column in (
            ("input", "input_tokens"),
            ("output", "output_tokens"),
            ("cached", "cached_tokens"),
            ("reasoning", "reasoning_tokens"),
        )
    }
    tokens["cached_reported"] = int(ok["cached_tokens"].is_not_null().sum())
    tokens["reasoning_reported"] = int(ok["reasoning_tokens"].is_not_null().sum())
    by_type = (
        failed.group_by("error_type", "status_code", "stage")
        .len()
        .sort("len", "error_type", descending=[True, False])
        .to_dicts()
        if failed.height
        else []
    )
    envs: dict[str, Any] = {}
    for env in sorted(ok["env"].drop_nulls().unique().to_list()):
        rewards = ok.select("env", "reward").filter(pl.col("env") == env)["reward"].drop_nulls()
        envs[env] = {
            "count": rewards.len(),
            "mean": round(float(rewards.mean()), 6) if rewards.len() else None,  # type: ignore[arg-type]
            "histogram": [{"lo": lo, "hi": hi, "count": n} for lo, hi, n in histogram(rewards, unit_range=True)],
        }
    rate = ok.height / window if window else None
    return {
        "rollouts": ok.height,
        "failed": failed.height,
        "retries": int((rows["attempts"].fill_null(1) - 1).clip(0).sum()) if rows.height else 0,
        "generation_window_s": round(window, 3) if window else None,
        "rollouts_per_s": round(rate, 2) if rate else None,
        "output_tokens": tokens["output"],
        "input_tokens": tokens["input"],
        "output_tokens_per_s": round(tokens["output"] / window, 1) if window else None,
        "tokens": tokens,
        "cost": cost(tokens, options),
        "timings_ms": {
            r["name"]: {k: r[k] for k in ("p50", "p90", "p99", "max")} for r in latency if r["scope"] == "stage"
        },
        "latency": latency,
        "latency_cdf_ms": {
            "rollout total": _cdf(ok["total_ms"]),
            "model call": _model_call_cdf(ok),
            "verify": _cdf(ok["verify_ms"]),
        },
        "timeline": timeline_rows(rows, options.window_s, parallel),
        "failures_by_type": [
            {"type": r["error_type"], "status_code": r["status_code"], "stage": r["stage"], "count": r["len"]}
            for r in by_type
        ],
        "rewards": envs,
        "pass_at_k": pass_at_k_rows(rows, options.pass_threshold),
    }


def _model_call_cdf(ok: pl.DataFrame) -> list[float]:
    exact = ok["model_calls_ms"].explode().drop_nulls()
    if exact.len():
        return _cdf(exact)
    return _cdf((ok["model_ms"] / ok["model_calls"].cast(pl.Float64)).filter(ok["model_calls"] > 0))


def cost(tokens: dict[str, int], options: ProfileOptions) -> dict[str, Any] | None:
    """Estimated cost in the prices' currency; cached input tokens are charged at the input price. In batch mode
    the batches' tokens are charged at the batch price (`batch_discount` times the list price), the live fallback
    calls' at the list price."""
    if options.price_input is None and options.price_output is None:
        return None
    price_in, price_out = (options.price_input or 0.0) / 1e6, (options.price_output or 0.0) / 1e6
    factor = 1.0 if options.batch_discount is None else options.batch_discount
    live_in, live_out = options.live_tokens if options.batch_discount is not None else (0, 0)
    input_cost = ((tokens["input"] - live_in) * factor + live_in) * price_in
    output_cost = ((tokens["output"] - live_out) * factor + live_out) * price_out
    return {
        "price_input_per_m": options.price_input,
        "price_output_per_m": options.price_output,
        "batch_discount": options.batch_discount,
        "live_fallback_tokens": {"input": live_in, "output": live_out} if options.batch_discount is not None else None,
        "list_total": round(tokens["input"] * price_in + tokens["output"] * price_out, 6),
        "input": round(input_cost, 6),
        "output": round(output_cost, 6),
        "total": round(input_cost + output_cost, 6),
    }


def timing_rows(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": name, **values} for name, values in profile["timings_ms"].items()]


def histogram_markdown(profile: dict[str, Any]) -> str:
    lines = ["# Reward histogram", ""]
    for env, stats in profile["rewards"].items():
        lines += [f"## {env}: {stats['count']} rollouts, mean reward {stats['mean']}", "", "```"]
        peak = max((b["count"] for b in stats["histogram"]), default=0) or 1
        for b in stats["histogram"]:
            label = f"{b['lo']:>6.2f}" if b["lo"] == b["hi"] else f"[{b['lo']:>6.2f}, {b['hi']:>6.2f})"
            lines.append(f"{label:>16}  {b['count']:>8}  {'#' * round(40 * b['count'] / peak)}")
        lines += ["```", ""]
    if not profile["rewards"]:
        lines.append("No verified rollouts.")
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as CSV (polars writes it: quoting and nulls done once, right)."""
    if not rows:
        return ",".join(columns or []) + "\n"
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.select(columns).write_csv() if columns else frame.write_csv()


def write_profile(store: Store, profile: dict[str, Any]) -> list[str]:
    """profile.json and its tables as CSV, plus the reward histogram as markdown; returns their URLs."""
    files = {
        "profile.json": None,
        "reward_histogram.md": histogram_markdown(profile),
        "timings.csv": csv_text(timing_rows(profile), ["stage", "p50", "p90", "p99", "max"]),
        "latency.csv": csv_text(profile["latency"], ["scope", "name", "count", "p50", "p90", "p99", "max"]),
        "timeline.csv": csv_text(profile["timeline"]),
        "errors.csv": csv_text(profile["failures_by_type"], ["type", "status_code", "stage", "count"]),
        "pass_at_k.csv": csv_text(profile["pass_at_k"]),
    }
    store.write_json(profile, "profile", "profile.json")
    for name, text in files.items():
        if text is not None:
            store.write_bytes(text.encode(), "profile", name)
    return [store.url("profile", name) for name in files]

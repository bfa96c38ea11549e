"""Whose row is it, and did the rollout succeed: our bookkeeping kept apart from NeMo Gym's and the verifiers' fields.

The rule (docs/training-files.md, "Whose row, and did it succeed"):
- A row with `schema_version` is ours: its `status` is ours and must be `ok` or `failed` (absent: `ok`).
- Any other row (NeMo Gym's, or another tool's) is judged by its content alone. It is a failed rollout when it has
  `_ng_failure_class` (NeMo Gym's failure sidecar rows), no `response` object, or no numeric `reward`; otherwise it
  is a successful one. Its top-level `status` is never read as ours: NeMo Gym verifiers write their own
  (`pass`, `fail`, `scored`, `error`, `failed: <msg>`...), and it stays with the row's other verifier fields.
"""

from __future__ import annotations

import polars as pl

OURS = pl.col("schema_version").is_not_null()
FAILURE_CLASS = pl.col("_ng_failure_class")

# Fields read by read_ndjson for these rules; any value is accepted as text (a verifier's status can be anything).
STATUS_FIELDS: dict[str, pl.DataType] = {
    "schema_version": pl.String(),
    "status": pl.String(),
    "_ng_failure_class": pl.String(),
    "_ng_failure_type": pl.String(),
    "_ng_failure_message": pl.String(),
    "_ng_failure_http_status": pl.String(),
}


def rollout_status(has_response: pl.Expr) -> pl.Expr:
    """ok | failed for every row; our rows keep what they say (checked by `status_problem`)."""
    reward = pl.col("reward")
    foreign = (
        pl.when(FAILURE_CLASS.is_not_null() | ~has_response | reward.is_null())
        .then(pl.lit("failed"))
        .otherwise(pl.lit("ok"))
    )
    return pl.when(OURS).then(pl.col("status").fill_null("ok")).otherwise(foreign)


def status_problem() -> pl.Expr:
    """Why one of our rows has an impossible status (null: fine)."""
    return pl.when(OURS & ~pl.col("rollout_status").is_in(["ok", "failed"])).then(
        pl.format("unknown status {}", pl.col("rollout_status"))
    )


def error_json(has_response: pl.Expr) -> pl.Expr:
    """A failed row's error as a JSON object: ours as stored (even a bare string), NeMo Gym's from its `_ng_failure_*`
    fields, and for a foreign row without them, what is missing."""
    raw = pl.col("raw").str
    missing = (
        pl.when(~has_response)
        .then(pl.lit("the row has no response"))
        .when(pl.col("reward").is_null())
        .then(pl.lit("the row has no numeric reward"))
    )
    kind = pl.when(OURS | raw.json_path_match("$.error").is_not_null()).then(raw.json_path_match("$.error.type"))
    return pl.struct(
        type=pl.coalesce(kind, pl.col("_ng_failure_type"), FAILURE_CLASS, pl.when(~OURS).then(pl.lit("Unscored"))),
        message=pl.coalesce(
            raw.json_path_match("$.error.message"),
            raw.json_path_match("$.error"),
            pl.col("_ng_failure_message"),
            pl.when(~OURS).then(missing),
        ),
        status_code=pl.coalesce(raw.json_path_match("$.error.status_code"), pl.col("_ng_failure_http_status")).cast(
            pl.Int64, strict=False
        ),
        stage=pl.coalesce(raw.json_path_match("$.error.stage"), FAILURE_CLASS),
    ).struct.json_encode()

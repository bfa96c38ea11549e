"""CollectConfig: every option of a collection run, as one frozen pydantic model (CLI, Prefect UI and deployments alike)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollouts.envs import parse_remote_env
from rollouts.errors import ConfigError
from rollouts.process.config import ProcessConfig

Objective = Literal["rl", "sft", "dpo"]

# NeMo Gym's sampling guidance per objective; explicit options override these.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "rl": {"temperature": 1.0, "top_p": 1.0, "num_repeats": 8},
    "sft": {"temperature": 0.2, "top_p": 1.0, "num_repeats": 2},
    "dpo": {"temperature": 0.7, "top_p": 1.0, "num_repeats": 4},
}

# Fields that decide which rollouts exist and what they contain: they make up the run digest.
# The input is identified by its content digest, not its path. Everything else (output place, parallelism, retries, filters) can change between a run and its resume.
_IDENTITY_FIELDS = (
    "model",
    "api",
    "num_repeats",
    "temperature",
    "top_p",
    "max_output_tokens",
    "seed",
    "limit",
    "start",
    "end",
    "shard_size",
    "env",
    "remote_env",
    "return_tokens",
    "max_turns",
)

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CollectConfig(BaseModel):
    """Options of `rollouts collect` and parameters of the `collect-rollouts` flow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(description="Prompts JSONL: local path or fsspec URL (s3://...)")
    out: str = Field("./runs", description="Where runs are written: local path or fsspec URL (s3://...)")
    model_url: str = Field(description="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    model: str = Field(description="Model name sent in each request")
    api: Literal["chat", "responses"] = "chat"
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key")
    objective: list[Objective] = Field(default_factory=lambda: ["rl"], description="rl|sft|dpo; several (rl,sft) give several training sets; the first sets sampling defaults")
    num_repeats: int | None = Field(None, ge=1, description="Rollouts per prompt (default from the objective)")
    parallel: int = Field(256, ge=1, description="Global number of rollouts in flight")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_output_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    limit: int | None = Field(None, ge=1, description="Use at most this many prompts (after --start/--end)")
    start: int = Field(0, ge=0, description="First input row (0-based, counting every non-blank line)")
    end: int | None = Field(None, ge=0, description="Stop before this input row")
    shard_size: int = Field(256, ge=1, description="Prompts per shard (one task run each)")
    max_concurrent_shards: int = Field(4, ge=1, description="Shard tasks running at once per process (task-runner limit)")
    task_runner: Literal["threads", "dask"] = Field("threads", description="threads in this process, or a Dask cluster")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (default: start a local one)")
    dask_workers: int = Field(2, ge=1, description="Dask worker processes: started locally, or expected at --dask-address")
    env: str = Field("math", description="Environment for rows without agent_ref")
    remote_env: dict[str, str] = Field(default_factory=dict, description="NAME -> NeMo Gym resources server URL")
    run_name: str | None = None
    request_timeout: float = Field(600.0, gt=0)
    max_retries: int = Field(4, ge=0)
    max_failure_fraction: float = Field(0.05, ge=0.0, le=1.0)
    return_tokens: bool = False
    max_turns: int = Field(8, ge=1, description="Model calls per rollout when tools are called")
    min_reward: float = Field(1.0, description="sft: keep rollouts with reward >= this")
    train_options: dict[str, Any] = Field(default_factory=dict, description="filter/format options of `rollouts process` (see ProcessConfig)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for --out")

    @field_validator("objective", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("--objective needs at least one of rl, sft, dpo")
        return list(dict.fromkeys(value)) if isinstance(value, list) else value

    @field_validator("model_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError(f"--model-url must start with http:// or https:// (got {value!r})")
        return value.rstrip("/")

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        if value is not None and not _RUN_NAME.match(value):
            raise ValueError("--run-name may only use letters, digits, '.', '_' and '-' (max 128)")
        return value

    @model_validator(mode="after")
    def _range(self) -> CollectConfig:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"--end ({self.end}) must be greater than --start ({self.start})")
        return self

    @model_validator(mode="after")
    def _train_options(self) -> CollectConfig:
        self.process_configs()  # fails here, before any rollout is generated, on a bad filter or format option
        return self

    def process_configs(self) -> list[ProcessConfig]:
        """The filter/format options of each objective, as `rollouts process` takes them."""
        options = {"min_reward": self.min_reward, **self.train_options}
        formats = options.pop("formats", {}) or {}
        return [ProcessConfig(objective=o, formats=tuple(formats.get(o, ())), **options) for o in self.objective]

    # Resolved sampling: explicit options win over the objective's preset.
    @property
    def processes(self) -> int:
        """Collector processes sharing `parallel`: each runs its own loop and holds its share of the slots."""
        return self.dask_workers if self.task_runner == "dask" else 1

    @property
    def parallel_per_process(self) -> int:
        return max(1, -(-self.parallel // self.processes))

    @property
    def objectives(self) -> list[str]:
        return list(self.objective)

    @property
    def repeats(self) -> int:
        return self.num_repeats or SAMPLING_PRESETS[self.objective[0]]["num_repeats"]

    def sampling_overrides(self) -> dict[str, Any]:
        """Sampling fields forced by options; rows' own fields are used for the rest, then the preset."""
        return {
            k: v
            for k, v in {"temperature": self.temperature, "top_p": self.top_p, "max_output_tokens": self.max_output_tokens}.items()
            if v is not None
        }

    def sampling_defaults(self) -> dict[str, Any]:
        preset = SAMPLING_PRESETS[self.objective[0]]
        return {"temperature": preset["temperature"], "top_p": preset["top_p"]}

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {self.api_key_env}: that environment variable is not set or empty")
        return key

    def identity(self) -> dict[str, Any]:
        data = self.model_dump()
        ident = {k: data[k] for k in _IDENTITY_FIELDS}
        ident["num_repeats"] = self.repeats
        ident.update({k: v for k, v in self.sampling_defaults().items() if ident.get(k) is None})
        return ident

    def digest(self, input_digest: str) -> str:
        blob = json.dumps({"config": self.identity(), "input": input_digest}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def parse_remote_envs(specs: list[str] | None) -> dict[str, str]:
    """Repeated `--remote-env NAME=URL` options as a mapping (the last one of a name wins)."""
    return dict(parse_remote_env(spec) for spec in specs or [])

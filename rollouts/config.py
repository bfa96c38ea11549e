"""CollectConfig: every option of a collection run as one frozen, typed pydantic model, in sections.

It is the `collect-rollouts` flow's one parameter (the Prefect UI's run form shows each field with its type, default
and description), `rollouts collect`'s options are generated from its fields, and the manifest stores it. Fields
marked IDENTITY decide which rollouts exist and what they contain: they and the input's content digest name the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from rollouts.client import DEFAULT_REPLY_MEMORY_BYTES
from rollouts.errors import ConfigError
from rollouts.options import FORM_MODEL, IDENTITY, Cli, field_of, identity_fields, marker
from rollouts.places import http_url
from rollouts.process.config import (
    Objective,
    ProcessConfig,
    RolloutFilesConfig,
    TrainConfig,
    parse_objectives,
)
from rollouts.quality.config import QualityConfig

if TYPE_CHECKING:  # the environments load httpx and aiohttp: only when a run builds them, not for every --help
    from rollouts.envs import Environment

# rollouts.envs.BUILTIN_ENVIRONMENTS by name (a unit test keeps the two the same), for --env's help
BUILTIN_ENVIRONMENT_NAMES = ("math", "exact_match", "multiple_choice", "calculator", "kv_store")

__all__ = [
    "SAMPLING_PRESETS",
    "DEFAULT_OUT",
    "BatchConfig",
    "CollectConfig",
    "ConcurrencyConfig",
    "EndpointConfig",
    "EnvironmentConfig",
    "Objective",
    "ProfilingConfig",
    "RowsConfig",
    "SamplingConfig",
    "StorageConfig",
    "TrainConfig",
    "api_key_from_env",
    "dated_input",
    "merged_config",
    "parse_remote_envs",
]

# NeMo Gym's sampling guidance per objective; explicit options override these.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "rl": {"temperature": 1.0, "top_p": 1.0, "num_repeats": 8},
    "sft": {"temperature": 0.2, "top_p": 1.0, "num_repeats": 2},
    "dpo": {"temperature": 0.7, "top_p": 1.0, "num_repeats": 4},
}

DEFAULT_OUT = "./runs"  # a storage block's URL replaces it; any other --out contradicting the block is refused
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _model_url(value: str | None) -> str | None:
    return None if value is None else http_url(value, "--model-url")


def api_key_from_env(name: str | None) -> str | None:
    """The API key held by the environment variable `name` (--api-key-env); None without a name."""
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"--api-key-env {name}: that environment variable is not set or empty")
    return key


class EndpointConfig(BaseModel):
    """The model server and how requests to it are made."""

    model_config = FORM_MODEL

    # `rollouts tune` reuses model_url, model, api, api_key_env and request_timeout (rollouts.tune.sweep.TuneConfig).
    model_url: Annotated[str | None, AfterValidator(_model_url)] = Field(
        None, description="OpenAI-compatible base URL, e.g. http://localhost:8000/v1"
    )
    model: Annotated[str | None, IDENTITY] = Field(
        None, description="model name sent with each request, e.g. Qwen/Qwen3-8B"
    )
    block: Annotated[str | None, Cli(flag="--model-block", metavar="NAME")] = Field(
        None,
        description="a ModelEndpoint block instead of --model-url and --model: base URL, model, API, key and "
        "headers (the secrets stay in the block)",
    )
    api: Annotated[Literal["chat", "responses"], IDENTITY] = Field(
        "chat", description="Chat Completions or the Responses API"
    )
    api_key_env: Annotated[str | None, Cli(metavar="VAR")] = Field(
        None, description="environment variable that holds the API key (sent as a Bearer token)"
    )
    request_timeout: float = Field(600.0, gt=0, description="seconds per model request, connect to last byte")
    max_retries: int = Field(
        4,
        ge=0,
        description="retries per request on 429/5xx/connection errors/timeouts, exponential backoff with "
        "jitter, Retry-After honoured",
    )
    rollout_timeout: float = Field(
        3600.0,
        gt=0,
        description="seconds for one whole rollout: its remote-environment session, every model and tool "
        "call, retries and backoff included; past it the rollout fails with RolloutTimeout",
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="largest model reply body read, in bytes; a larger one fails the "
        "rollout with ResponseTooLarge (not retried)",
    )
    max_reply_memory_bytes: int = Field(
        DEFAULT_REPLY_MEMORY_BYTES,
        ge=1024,
        description="bytes of reply bodies read at once by one collector process, model and resources servers "
        "together; a reply past it waits for others to be read (the oldest never waits), so replies being read hold "
        "at most this plus one --max-response-bytes, whatever --parallel",
    )
    check_model: Annotated[bool, Cli(flag="--no-model-check", invert=True)] = Field(
        True,
        description="refuse --model before the run when the server lists its models (GET /models) and it is not "
        "among them; --no-model-check for a gateway whose list is incomplete",
    )
    return_tokens: Annotated[bool, IDENTITY] = Field(
        False,
        description="ask for prompt/generation token ids and logprobs (vLLM return_token_ids), kept as "
        "prompt_token_ids, generation_token_ids, generation_log_probs",
    )
    # Not part of the run's identity: every source gives the server's exact ids (no local guess), so the rollouts
    # are the same whichever one a run uses; each row records its own (`token_source`), and a resumed run may name
    # another (say `auto` -> `llamacpp`) without starting over.
    token_source: Literal["auto", "vllm", "sglang", "llamacpp", "tokenize"] = Field(
        "auto",
        description="where --return-tokens ids come from: auto (by what the server answers), vllm "
        "(return_token_ids), sglang (return_prompt_token_ids, meta_info), llamacpp (logprobs ids; prompt ids by "
        "its /apply-template and /tokenize), tokenize (vLLM's token_id:N logprobs; prompt ids by its /tokenize)",
    )

    @model_validator(mode="after")
    def _given(self) -> EndpointConfig:
        if not self.block and not (self.model_url and self.model):
            raise ValueError("give --model-url and --model, or --model-block")
        if self.api == "responses" and self.token_source not in ("auto", "vllm"):
            raise ValueError(f"--token-source {self.token_source} needs --api chat (the Responses API has vllm's only)")
        return self

    @property
    def base_url(self) -> str:
        """`model_url` of an endpoint in use: a run resolves --model-block into it before it sends anything."""
        if self.model_url is None:
            raise ConfigError(f"no --model-url: the model block {self.block!r} was not resolved")
        return self.model_url

    @property
    def model_name(self) -> str:
        """`model` of an endpoint in use (see `base_url`)."""
        if self.model is None:
            raise ConfigError(f"no --model: the model block {self.block!r} was not resolved")
        return self.model


class SamplingConfig(BaseModel):
    """
    Sampling: explicit values override the rows' own `responses_create_params`; the objective's preset fills the rest.
    """

    model_config = FORM_MODEL

    num_repeats: Annotated[int | None, IDENTITY] = Field(
        None, ge=1, description="rollouts per prompt (default: rl 8, sft 2, dpo 4)"
    )
    temperature: Annotated[float | None, IDENTITY] = Field(
        None,
        ge=0.0,
        le=2.0,
        description="sampling temperature; overrides the rows' value (collect's default: rl 1.0, sft 0.2, dpo 0.7)",
    )
    top_p: Annotated[float | None, IDENTITY] = Field(
        None, gt=0.0, le=1.0, description="nucleus sampling; overrides the rows' value (default 1.0)"
    )
    max_output_tokens: Annotated[int | None, IDENTITY] = Field(
        None, ge=1, description="output token limit per model call; overrides the rows' value"
    )
    seed: Annotated[int | None, IDENTITY] = Field(
        None, description="sampling seed; rollout i of a prompt is sent seed + i"
    )


class RowsConfig(BaseModel):
    """Which input rows are used (for splitting a dataset across machines)."""

    model_config = FORM_MODEL

    limit: Annotated[int | None, IDENTITY] = Field(None, ge=1, description="use at most this many prompts")
    start: Annotated[int, IDENTITY] = Field(
        0, ge=0, description="first input row to use (0-based, counting every non-blank line)"
    )
    end: Annotated[int | None, IDENTITY] = Field(None, ge=0, description="stop before this input row")

    @model_validator(mode="after")
    def _range(self) -> RowsConfig:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"--end ({self.end}) must be greater than --start ({self.start})")
        return self


class ConcurrencyConfig(BaseModel):
    """How much runs at once, and where."""

    model_config = FORM_MODEL

    parallel: Annotated[int | Literal["auto"], Cli(metavar="N|auto")] = Field(
        256,
        description="global number of rollouts in flight (NeMo Gym's num_samples_in_parallel), or auto: an "
        "adaptive controller between --min-parallel and --max-parallel (threads runner)",
    )
    min_parallel: int = Field(8, ge=1, description="--parallel auto: the lowest limit")
    initial_parallel: int = Field(
        32,
        ge=1,
        description="--parallel auto: where the limit starts (kept within --min-parallel and --max-parallel)",
    )
    max_parallel: int = Field(
        1024,
        ge=1,
        description="the highest --parallel: with --parallel auto, the controller's top limit and the "
        "connection pool size; in rollouts tune, the largest step",
    )
    shard_size: Annotated[int, IDENTITY] = Field(
        256, ge=1, description="prompts per shard: one Prefect task run per shard and stage"
    )
    max_concurrent_shards: int = Field(
        4,
        ge=1,
        description="shard tasks running at once per process: the task runner's limit (with --batch and threads or "
        "processes, every shard at once, up to 256)",
    )
    task_runner: Literal["threads", "processes", "dask", "ray"] = Field(
        "threads",
        description="run shard tasks on threads of this process, in --workers collector processes of this "
        "machine, or on a Dask or Ray cluster",
    )
    workers: Annotated[int | None, Cli(metavar="N")] = Field(
        None,
        ge=1,
        description="collector processes for --task-runner processes (default: half the cores, at most "
        "8, so a model server on this machine keeps the rest); --parallel is split between them, and each runs "
        "--max-concurrent-shards shards at once",
    )
    dask_address: Annotated[str | None, Cli(metavar="tcp://HOST:8786")] = Field(
        None, description="scheduler of an existing Dask cluster (default: start a local one)"
    )
    dask_workers: int = Field(
        2,
        ge=1,
        description=(
            "Dask worker processes, started locally or expected at --dask-address; --parallel is split between them"
        ),
    )
    ray_address: Annotated[str | None, Cli(metavar="ray://HOST:10001")] = Field(
        None, description="an existing Ray cluster, or auto (default: start a local Ray instance)"
    )
    ray_workers: int = Field(
        2,
        ge=1,
        description="Ray worker processes: CPUs of the local instance, or expected at --ray-address; "
        "--parallel is split between them",
    )

    @field_validator("parallel", mode="before")
    @classmethod
    def _parallel(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        elif isinstance(value, str) and value != "auto":
            raise ValueError(f"--parallel must be a positive integer or auto (got {value!r})")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"--parallel must be at least 1 (got {value})")
        return value

    @model_validator(mode="after")
    def _auto(self) -> ConcurrencyConfig:
        if self.min_parallel > self.max_parallel:
            raise ValueError(f"--min-parallel ({self.min_parallel}) is above --max-parallel ({self.max_parallel})")
        if self.parallel == "auto" and self.task_runner != "threads":
            raise ValueError("--parallel auto runs in one collector process: use it with --task-runner threads")
        if self.workers is not None and self.task_runner != "processes":
            raise ValueError(
                f"--workers is the number of collector processes of --task-runner processes; with "
                f"--task-runner {self.task_runner} it does nothing (Dask and Ray: --dask-workers, --ray-workers)"
            )
        return self

    @property
    def fixed_parallel(self) -> int:
        """The most rollouts that may be in flight: --parallel, or --max-parallel with auto."""
        return self.max_parallel if self.parallel == "auto" else int(self.parallel)

    @property
    def worker_processes(self) -> int:
        """Collector processes for --task-runner processes: --workers, else half the cores (at most 8)."""
        return self.workers or max(1, min(8, (os.cpu_count() or 2) // 2))

    @property
    def processes(self) -> int:
        """Collector processes sharing `parallel`: each runs its own loop and holds its share of the slots."""
        return {"processes": self.worker_processes, "dask": self.dask_workers, "ray": self.ray_workers}.get(
            self.task_runner, 1
        )


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """Per-rollout limits of the agent loop (`EnvironmentConfig.limits()`). `timeout_s` counts from the loop's start;
    `tool_timeout_s` applies to each tool call."""

    max_turns: int = 8
    max_rollout_tokens: int | None = None
    timeout_s: float | None = None
    tool_timeout_s: float | None = None
    max_tool_calls_per_turn: int = 64

    def __post_init__(self) -> None:
        if self.max_tool_calls_per_turn < 1:
            raise ConfigError(f"max_tool_calls_per_turn must be at least 1 (got {self.max_tool_calls_per_turn})")
        if self.max_turns < 1:
            raise ConfigError(f"max_turns must be at least 1 (got {self.max_turns})")
        if self.max_rollout_tokens is not None and self.max_rollout_tokens < 1:
            raise ConfigError(f"max_rollout_tokens must be at least 1 (got {self.max_rollout_tokens})")
        for name in ("timeout_s", "tool_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive (got {value})")


class EnvironmentConfig(BaseModel):
    """What a prompt is solved in: its tools and its verifier."""

    model_config = FORM_MODEL

    env: Annotated[str, IDENTITY] = Field(
        "math",
        description=f"environment for rows without agent_ref: {', '.join(BUILTIN_ENVIRONMENT_NAMES)}, one of an "
        "--env-module, or a --remote-env name",
    )
    remote_env: Annotated[dict[str, str], IDENTITY, Cli(metavar="NAME=URL")] = Field(
        {}, description="a NeMo Gym resources server scoring rows whose agent_ref.name is NAME (repeatable)"
    )
    max_turns: Annotated[int, IDENTITY] = Field(
        8, ge=1, description="model calls per rollout (the agent loop ends there)"
    )
    max_rollout_tokens: Annotated[int | None, IDENTITY, Cli(metavar="N")] = Field(
        None, ge=1, description="output tokens over all model calls of a rollout; no new call starts once reached"
    )
    agent_timeout: Annotated[float | None, Cli(metavar="S")] = Field(
        None,
        gt=0,
        description="seconds for a rollout's agent loop (model and tool calls); when reached, the calls "
        "and tools in flight are cancelled and what finished is kept (end reason deadline); "
        "--rollout-timeout is the hard limit that fails the rollout",
    )
    tool_timeout: Annotated[float, Cli(metavar="S")] = Field(
        60.0, gt=0, description="seconds per tool call; a slower call returns an error to the model"
    )
    max_tool_calls_per_turn: Annotated[int, Cli(metavar="N")] = Field(
        64, ge=1, description="tool calls run per model turn; further calls of that turn get an error as their output"
    )
    env_module: Annotated[list[str], IDENTITY, Cli(metavar="MODULE")] = Field(
        [],
        description="Python module defining environments (e.g. my_pkg.my_env), imported in every collector "
        "process (repeatable)",
    )

    def build(self) -> dict[str, Environment]:
        """The run's environments: built-ins, entry points and --env-module ones, then the remote ones."""
        from rollouts.envs import build_environments

        return build_environments(self.remote_env, self.env_module)

    def names(self) -> set[str]:
        from rollouts.envs import known_environment_names

        return known_environment_names(self.remote_env, self.env_module)

    def limits(self) -> AgentLimits:
        return AgentLimits(
            max_turns=self.max_turns,
            max_rollout_tokens=self.max_rollout_tokens,
            timeout_s=self.agent_timeout,
            tool_timeout_s=self.tool_timeout,
            max_tool_calls_per_turn=self.max_tool_calls_per_turn,
        )

    @field_validator("remote_env", mode="before")
    @classmethod
    def _remote(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):  # NAME=URL specs, as the command line gives them
            return parse_remote_envs(list(value))
        return value

    @model_validator(mode="after")
    def _known_env(self) -> EnvironmentConfig:
        # Checked even when every row names its own environment: a typo here would otherwise pass unnoticed.
        names = self.names()
        if self.env not in names:
            raise ValueError(f"--env {self.env!r} is not an environment; choose from {', '.join(sorted(names))}")
        return self


class ProfilingConfig(BaseModel):
    """What the run's profile measures beyond its always-on report."""

    model_config = FORM_MODEL

    profile: bool = Field(
        False,
        description="function-level profile of verifiers and tools (yappi, wall and CPU "
        "clocks) to profile/functions.csv; costs CPU while on",
    )
    profile_duty: float = Field(1.0, gt=0, le=1, description="--profile: fraction of the time the profiler is on")
    price_input: Annotated[float | None, Cli(metavar="USD")] = Field(
        None, ge=0, description="price per million input tokens, for the report's cost estimate"
    )
    price_output: Annotated[float | None, Cli(metavar="USD")] = Field(
        None, ge=0, description="price per million output tokens, for the report's cost estimate"
    )


class BatchConfig(BaseModel):
    """Provider batch mode: the model calls go through the Batch API (about half the price, within 24 h).

    Not part of a run's identity: the same requests get the same kind of answers either way, so a run may switch
    between live calls and batch mode when it is resumed.
    """

    model_config = FORM_MODEL

    enabled: Annotated[bool, Cli(flag="--batch")] = Field(
        False,
        description="send the model calls through the provider's Batch API (/v1/files, /v1/batches): about half "
        "the price, results within 24 h; a tool rollout advances one turn per batch round",
    )
    fallback: Annotated[Literal["batch", "live"], Cli(flag="--batch-fallback")] = Field(
        "batch",
        description="what a batch did not answer (expired, cancelled, failed with 429/5xx) goes into a new batch "
        "(batch, up to --batch-rounds), or at once as live calls at the live price (live)",
    )
    discount: Annotated[float, Cli(flag="--batch-discount", metavar="FRACTION")] = Field(
        0.5, ge=0, le=1, description="batch price as a fraction of the live price, for the report's cost estimate"
    )
    rounds: Annotated[int, Cli(flag="--batch-rounds", metavar="N")] = Field(
        3, ge=1, description="batches one request may go through before its failure is final"
    )
    poll_interval: Annotated[float, Cli(flag="--batch-poll-interval", metavar="S")] = Field(
        30.0, gt=0, description="seconds between two status checks of a batch in flight"
    )
    max_requests: Annotated[int, Cli(flag="--batch-max-requests", metavar="N")] = Field(
        50_000, ge=1, description="most requests in one batch input file (OpenAI: 50,000)"
    )
    max_bytes: Annotated[int, Cli(flag="--batch-max-bytes", metavar="BYTES")] = Field(
        200 * 1024**2, ge=1024, description="largest batch input file in bytes (OpenAI: 200 MB)"
    )


class StorageConfig(BaseModel):
    """Where runs are written."""

    model_config = FORM_MODEL

    out: Annotated[str, Cli(flag="--out")] = Field(
        DEFAULT_OUT, description="where runs are written: local path or fsspec URL such as s3://bucket/runs"
    )
    block: Annotated[str | None, Cli(flag="--storage-block", metavar="NAME")] = Field(
        None, description="a RolloutStorage block: where runs go, with the filesystem's options and credentials"
    )
    options: dict[str, Any] = field_of(RolloutFilesConfig, "storage_options")  # --storage-options, as process has it


class CollectConfig(BaseModel):
    """Options of `rollouts collect` and the parameter of the `collect-rollouts` flow."""

    model_config = FORM_MODEL

    input: Annotated[str, Cli(positional=True)] = Field(
        description='prompts JSONL (NeMo Gym rows, {"prompt": ...} or {"messages": [...]}): local path or fsspec URL'
    )
    objective: list[Objective] = Field(
        ["rl"],
        description=(
            "training files to write: one or more of rl, sft, dpo (on the command line a comma list such as "
            "rl,dpo); the first sets sampling defaults"
        ),
    )
    run_name: str | None = Field(
        None, description="name of the run directory (default: input name + digest of config and input)"
    )
    max_failure_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="the run fails when more rollouts than this fraction fail"
    )
    endpoint: EndpointConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    rows: RowsConfig = Field(default_factory=RowsConfig)
    concurrency: ConcurrencyConfig = Field(default_factory=ConcurrencyConfig)
    environments: EnvironmentConfig = Field(default_factory=EnvironmentConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    profiling: ProfilingConfig = Field(default_factory=ProfilingConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {"endpoint": {}, **cls.nested(data)}  # a missing endpoint says what to give, not "field required"

    @classmethod
    def nested(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Accept a section's fields at the top level too (`CollectConfig(input=..., model_url=..., model=...)`):
        each is moved into the section that declares it. Deployments use this to store nested parameters. The flat
        keywords are a run-time convenience (tests, benchmarks, stored parameters): type-checked code passes the
        sections (`CollectConfig(input=..., endpoint=EndpointConfig(...))`), which mypy's pydantic plugin checks."""
        data = dict(data)
        if isinstance(data.get("batch"), bool):  # `batch=True`: the switch of the batch section, as --batch
            data["batch"] = {"enabled": data["batch"]}
        owners = _leaf_owners()
        for key in [k for k in data if k not in cls.model_fields]:
            if key in owners:
                section, name = owners[key]
                data[section] = {**dict(data.get(section) or {}), name: data.pop(key)}
        return data

    @field_validator("objective", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> Any:
        if not isinstance(value, (str, list, tuple)):
            return value
        names = parse_objectives(value)
        if not names:
            raise ValueError("--objective needs at least one of rl, sft, dpo")
        return names

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        if value is not None and not _RUN_NAME.match(value):
            raise ValueError("--run-name may only use letters, digits, '.', '_' and '-' (max 128)")
        return value

    @model_validator(mode="after")
    def _tokens_asked(self) -> CollectConfig:
        # Token records are built from the ids the server returns: without them the file would be empty.
        if "rl" in self.objective and "tokens" in self.train.formats.rl and not self.endpoint.return_tokens:
            raise ValueError(
                "--format tokens needs --return-tokens: token records are built from the ids the server sends"
            )
        return self

    @model_validator(mode="after")
    def _batch_usable(self) -> CollectConfig:
        source = self.endpoint.token_source
        if self.batch.enabled and self.endpoint.return_tokens and source in ("llamacpp", "tokenize"):
            raise ValueError(
                f"--batch with --token-source {self.endpoint.token_source}: that source needs a request to the "
                "server's tokenizer per call, which a batch cannot make; use vllm or sglang, or live calls"
            )
        return self

    # ----- derived -----------------------------------------------------------------------------------------------

    def process_configs(self) -> list[ProcessConfig]:
        """The filter/format options of each objective, as `rollouts process` takes them."""
        return [self.train.for_objective(o) for o in self.objective]

    @property
    def processes(self) -> int:
        return self.concurrency.processes

    @property
    def parallel_per_process(self) -> int:
        return max(1, -(-self.concurrency.fixed_parallel // self.processes))

    @property
    def repeats(self) -> int:
        return self.sampling.num_repeats or SAMPLING_PRESETS[self.objective[0]]["num_repeats"]

    def sampling_overrides(self) -> dict[str, Any]:
        """Sampling fields forced by options; rows' own fields are used for the rest, then the preset."""
        s = self.sampling
        forced = {"temperature": s.temperature, "top_p": s.top_p, "max_output_tokens": s.max_output_tokens}
        return {k: v for k, v in forced.items() if v is not None}

    def sampling_defaults(self) -> dict[str, Any]:
        preset = SAMPLING_PRESETS[self.objective[0]]
        return {"temperature": preset["temperature"], "top_p": preset["top_p"]}

    def run_environments(self) -> dict[str, Environment]:
        """The run's environments; a resources server's requests get --request-timeout (connect to last byte) and
        --max-response-bytes, like the model's."""
        from rollouts.envs import RemoteEnvironment

        envs = self.environments.build()
        for env in envs.values():
            if isinstance(env, RemoteEnvironment):
                env.timeout, env.max_reply_bytes = self.endpoint.request_timeout, self.endpoint.max_response_bytes
                env.reply_memory_bytes = self.endpoint.max_reply_memory_bytes
        return envs

    def api_key(self) -> str | None:
        return api_key_from_env(self.endpoint.api_key_env)

    def identity(self) -> dict[str, Any]:
        """The fields that decide generation, by their (flat) field names, with presets resolved."""
        data = self.model_dump()
        ident: dict[str, Any] = {}
        for path in identity_fields(CollectConfig):
            value: Any = data
            for part in path:
                value = value[part]
            ident[path[-1]] = value
        ident["num_repeats"] = self.repeats
        ident.update({k: v for k, v in self.sampling_defaults().items() if ident.get(k) is None})
        return ident

    def digest(self, input_digest: str) -> str:
        blob = json.dumps({"config": self.identity(), "input": input_digest}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def dated_input(template: str, when: datetime) -> str:
    """The input of a scheduled collection: `{date}` in it becomes the day of `when` (YYYY-MM-DD, UTC), so a
    nightly deployment of `s3://bucket/prompts/{date}.jsonl` collects each day's file."""
    return template.replace("{date}", when.astimezone(UTC).strftime("%Y-%m-%d"))


def merged_config(given: dict[str, Any], defaults: dict[str, Any] | None = None) -> CollectConfig:
    """A CollectConfig from a deployment's parameters (`defaults`: top-level fields and sections) and what one run
    gives: a top-level value replaces the default, a section is merged onto the default's field by field. A section
    given as a model contributes only the fields set on it."""
    data = dict(defaults or {})
    for key, value in given.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            value = {**data[key], **value}
        data[key] = value
    return CollectConfig.model_validate(data)


def _leaf_owners() -> dict[str, tuple[str, str]]:
    """Top-level name -> (section, field) for every section field, by its field name and by its flag's name
    (`model_block` for `endpoint.block`, `storage_options` for `storage.options`). The first section that declares a
    name wins: generation sections come before `train`, so `max_turns` is the generation limit, as on the command
    line."""
    owners: dict[str, tuple[str, str]] = {}
    for section, field in CollectConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for name, leaf in model.model_fields.items():
                cli = marker(leaf, Cli)
                if cli is not None and cli.flag:
                    owners.setdefault(cli.flag.lstrip("-").replace("-", "_"), (section, name))
                owners.setdefault(name, (section, name))
    return owners


def parse_remote_envs(specs: list[str] | None) -> dict[str, str]:
    """Repeated `--remote-env NAME=URL` options as a mapping (the last one of a name wins)."""
    from rollouts.envs import parse_remote_env

    return dict(parse_remote_env(spec) for spec in specs or [])

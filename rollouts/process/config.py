"""ProcessConfig: every filter and format option of `rollouts process` and of the flow's filter and format stages; and
RolloutFilesConfig, the input and output options of the commands that read existing rollouts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from rollouts.options import FORM_MODEL, Cli

Objective = Literal["rl", "sft", "dpo"]
OBJECTIVES: tuple[Objective, ...] = ("rl", "sft", "dpo")


def parse_objectives(values: Any) -> list[str]:
    """Objective names from `--objective` values (each may be a comma list: `rl,sft`), in order, once each; a
    ValueError names an unknown one. No names gives an empty list: the caller decides the default."""
    items = values if isinstance(values, (list, tuple)) else [values]
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    unknown = [name for name in names if name not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    return list(dict.fromkeys(names))


# Output formats per objective; the first ones are the defaults.
FORMATS: dict[str, tuple[str, ...]] = {
    "rl": ("parquet", "jsonl", "verl", "tokens"),
    "sft": ("openai", "trl", "trl-prompt-completion", "verl"),
    "dpo": ("trl", "openai", "trl-standard", "nemo-rl"),
}
DEFAULT_FORMATS: dict[str, tuple[str, ...]] = {
    "rl": ("parquet",),
    "sft": ("openai", "trl"),
    "dpo": ("trl", "openai"),
}
FORMAT_HELP = {
    "rl/parquet": "one row per rollout with group stats and advantage; prompt/tools/output/extra as JSON text",
    "rl/jsonl": "the same rows as JSON lines, prompt/tools/output as nested JSON",
    "rl/tokens": "token records (tokens/): input_ids, loss_mask, logprobs per sample, plus NeMo RL message_log and "
    "verl shapes; breaks repaired by --on-break",
    "rl/verl": "verl RLHFDataset prompts (verl.parquet): prompt messages, data_source, reward_model, extra_info; "
    "one row per prompt",
    "sft/openai": "OpenAI chat fine-tuning: messages (assistant tool_calls, tool messages) + tools",
    "sft/trl": "TRL conversational: messages + tools (tool-call arguments as objects)",
    "sft/trl-prompt-completion": "TRL conversational prompt/completion: prompt and completion message lists + tools",
    "sft/verl": "verl multi-turn SFT (verl.parquet): nested messages and tools",
    "dpo/trl": "TRL conversational preference: prompt, chosen, rejected message lists (+ tools)",
    "dpo/openai": "OpenAI preference fine-tuning: input{messages,tools}, preferred_output, non_preferred_output",
    "dpo/trl-standard": "TRL standard preference: prompt, chosen, rejected as plain strings",
    "dpo/nemo-rl": "NeMo RL preference: context + completions with rank (0 = chosen)",
}


class RolloutFilesConfig(BaseModel):
    """Existing rollouts in, files out: the options `rollouts process` and `rollouts tokens` share (`rollouts collect`'s
    --storage-options is this field too)."""

    model_config = FORM_MODEL

    inputs: Annotated[list[str], Cli(positional=True, metavar="INPUT")] = Field(
        description="run directory, rollout file or glob"
    )
    out: Annotated[str, Cli(metavar="URL")] = Field(description="output directory (local path or fsspec URL)")
    storage_options: Annotated[dict[str, Any], Cli(flag="--storage-options", metavar="JSON")] = Field(
        default_factory=dict,
        description="fsspec options for INPUT and --out, such as '{\"anon\": false}' or an "
        "endpoint; keep credentials in the usual AWS environment variables or profile",
    )


class FilterOptions(BaseModel):
    """The filter options of every objective. One set drives several objectives: each reads the fields of its own."""

    model_config = FORM_MODEL

    skip_bad_rows: bool = Field(False, description="skip and count malformed rows instead of failing")
    drop_unhealthy: list[str] = Field(
        [],
        description="every objective: drop rollouts the health checks found unhealthy: 'all', or the ids of the "
        "checks that count (comma list); counted in the data card. A run's own quality/verdicts.jsonl is used, "
        "other inputs are checked first",
    )

    # RL
    advantage_scale: Literal["group", "batch", "none"] = Field(
        "group", description="rl: advantage = (reward - group mean) / scale, scale = group std, batch std or none"
    )
    drop_uniform_groups: bool = Field(False, description="rl: drop groups whose rewards are all equal (no gradient)")
    on_break: Literal["splice", "split", "truncate", "drop"] = Field(
        "split",
        description="token records (rl --format tokens; rollouts tokens): at a break, where a call's "
        "prompt does not continue the previous call's prompt + generation: splice = keep the generated ids, append "
        "only the next prompt's new tokens; split = start a new sample; truncate = keep the "
        "contiguous prefix; drop = leave the rollout out",
    )
    uniform_tolerance: Annotated[float, Cli(metavar="TOL")] = Field(
        1e-6, ge=0, description="rl: a group is uniform when max - min <= this"
    )
    keep_mean_between: Annotated[tuple[float, float] | None, Cli(metavar=("LO", "HI"))] = Field(
        None, description="rl: keep groups with LO <= mean reward <= HI"
    )

    # SFT (keep_length_truncated and drop_duplicates also apply to DPO candidates)
    min_reward: float | None = Field(
        1.0,
        description="sft: keep rollouts with reward >= this, the same default in `collect` and `process`; "
        "'none' keeps every reward, wrong answers included",
    )
    per_prompt: Annotated[int, Cli(metavar="K")] = Field(
        1, ge=1, description="sft: best-of-n, keep the top K rollouts of each prompt"
    )
    drop_duplicates: Annotated[bool, Cli(flag="--keep-duplicates", invert=True)] = Field(
        True, description="sft and dpo: keep exact duplicate completions of a prompt (dropped by default)"
    )
    max_turns: Annotated[int | None, Cli(metavar="N", collect_flag="--sft-max-turns")] = Field(
        None, ge=1, description="sft: drop rollouts with more model turns"
    )
    max_output_tokens: Annotated[int | None, Cli(metavar="N", collect_flag="--sft-max-output-tokens")] = Field(
        None, ge=1, description="sft: drop rollouts with more output tokens"
    )
    keep_length_truncated: bool = Field(False, description="sft and dpo: keep rollouts cut off by the token limit")

    # DPO
    pairing: Literal["best-worst", "all-pairs", "top-bottom-k"] = Field(
        "best-worst", description="dpo: which pairs of a group: its best and worst, every pair, or the k best x k worst"
    )
    min_margin: float = Field(0.0, ge=0, description="dpo: minimum reward margin (a tie is never a pair)")
    pair_by_task_index: bool = Field(
        False,
        description="dpo: pair rollouts of one task index even when their prompts differ (stateful "
        "environments give each rollout its own prompt); by default such pairs are dropped and "
        "counted as different_prompts",
    )
    top_k: Annotated[int, Cli(metavar="K")] = Field(2, ge=1, description="dpo: k for --pairing top-bottom-k")
    max_pairs_per_prompt: Annotated[int | None, Cli(metavar="N")] = Field(
        None, ge=1, description="dpo: keep the N largest-margin pairs of a prompt"
    )
    max_length_ratio: Annotated[float | None, Cli(metavar="R")] = Field(
        None, ge=1, description="dpo: drop pairs whose longer side is over R times the shorter"
    )

    @model_validator(mode="after")
    def _check_range(self) -> FilterOptions:
        if self.keep_mean_between is not None and self.keep_mean_between[0] > self.keep_mean_between[1]:
            raise ValueError(f"--keep-mean-between: low {self.keep_mean_between[0]} > high {self.keep_mean_between[1]}")
        return self

    @field_validator("drop_unhealthy", mode="before")
    @classmethod
    def _drop_unhealthy(cls, value: Any) -> Any:
        # the command line gives a list of comma lists; "all" alone means every check
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            ids = list(dict.fromkeys(part.strip() for item in value for part in str(item).split(",") if part.strip()))
            if "all" in ids and len(ids) > 1:
                raise ValueError("'all' (every check) or check ids, not both")
            return ids
        return value


def _format_list(objective: str) -> Any:
    return list[Literal[FORMATS[objective]]]  # type: ignore[valid-type]


if TYPE_CHECKING:
    # Statically a list of names; at run time a list of Literal[the objective's FORMATS], so pydantic checks each
    # name (and the JSON schema lists them) without a second spelling of the names here.
    RLFormats = list[str]
    SFTFormats = list[str]
    DPOFormats = list[str]
else:
    RLFormats, SFTFormats, DPOFormats = _format_list("rl"), _format_list("sft"), _format_list("dpo")


class OutputFormats(BaseModel):
    """Output formats per objective (set on the command line with --format [OBJECTIVE:]NAME)."""

    model_config = FORM_MODEL

    rl: RLFormats = Field(
        list(DEFAULT_FORMATS["rl"]), min_length=1, description="rl files: " + ", ".join(FORMATS["rl"])
    )
    sft: SFTFormats = Field(
        list(DEFAULT_FORMATS["sft"]), min_length=1, description="sft files: " + ", ".join(FORMATS["sft"])
    )
    dpo: DPOFormats = Field(
        list(DEFAULT_FORMATS["dpo"]), min_length=1, description="dpo files: " + ", ".join(FORMATS["dpo"])
    )

    @model_validator(mode="after")
    def _unique(self) -> OutputFormats:
        for objective in OBJECTIVES:
            names = getattr(self, objective)
            if len(set(names)) != len(names):
                raise ValueError(f"{objective} format listed twice: {names}")
        return self


class TrainConfig(FilterOptions):
    """Filter and format options of the training files: `rollouts process` and the flow's last two stages."""

    formats: Annotated[OutputFormats, Cli(flag="--format", metavar="[OBJ:]NAME")] = Field(
        default_factory=OutputFormats, description="output formats per objective"
    )

    def for_objective(self, objective: Objective) -> ProcessConfig:
        """The one place where a ProcessConfig is built from the shared options."""
        options = self.model_dump(exclude={"formats"})
        return ProcessConfig(objective=objective, formats=tuple(getattr(self.formats, objective)), **options)


class ProcessConfig(FilterOptions):
    """Options for one objective: its output formats and the filter options (others' options are ignored)."""

    objective: Objective
    formats: tuple[str, ...] = ()  # empty: the objective's defaults

    @model_validator(mode="after")
    def _check(self) -> ProcessConfig:
        allowed = FORMATS[self.objective]
        unknown = [f for f in self.formats if f not in allowed]
        if unknown:
            raise ValueError(f"unknown {self.objective} format(s) {unknown}; choose from {list(allowed)}")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"format listed twice: {list(self.formats)}")
        return self

    @property
    def output_formats(self) -> tuple[str, ...]:
        return self.formats or DEFAULT_FORMATS[self.objective]

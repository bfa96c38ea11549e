"""ProcessConfig: every filter and format option of `rollouts process` and of the flow's filter and format stages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Objective = Literal["rl", "sft", "dpo"]
OBJECTIVES: tuple[Objective, ...] = ("rl", "sft", "dpo")

# Output formats per objective; the first ones are the defaults.
FORMATS: dict[str, tuple[str, ...]] = {
    "rl": ("parquet", "jsonl", "verl"),
    "sft": ("openai", "trl", "trl-prompt-completion", "verl"),
    "dpo": ("trl", "openai", "trl-standard", "nemo-rl"),
}
DEFAULT_FORMATS: dict[str, tuple[str, ...]] = {
    "rl": ("parquet",),
    "sft": ("openai", "trl"),
    "dpo": ("trl", "openai"),
}
FORMAT_HELP = {
    "rl/parquet": "one row per rollout with group stats and advantage; prompt/tools/output as JSON text",
    "rl/jsonl": "the same rows as JSON lines, prompt/tools/output as nested JSON",
    "rl/verl": "verl RLHFDataset prompts (verl.parquet): prompt messages, data_source, reward_model, extra_info; one row per prompt",
    "sft/openai": "OpenAI chat fine-tuning: messages (assistant tool_calls, tool messages) + tools",
    "sft/trl": "TRL conversational: messages + tools (tool-call arguments as objects)",
    "sft/trl-prompt-completion": "TRL conversational prompt/completion: prompt and completion message lists + tools",
    "sft/verl": "verl multi-turn SFT (verl.parquet): nested messages and tools",
    "dpo/trl": "TRL conversational preference: prompt, chosen, rejected message lists (+ tools)",
    "dpo/openai": "OpenAI preference fine-tuning: input{messages,tools}, preferred_output, non_preferred_output",
    "dpo/trl-standard": "TRL standard preference: prompt, chosen, rejected as plain strings",
    "dpo/nemo-rl": "NeMo RL preference: context + completions with rank (0 = chosen)",
}


class ProcessConfig(BaseModel):
    """Options for one objective. Options of other objectives are accepted and ignored, so one set of CLI flags can
    drive several objectives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: Objective
    formats: tuple[str, ...] = ()  # empty: the objective's defaults
    skip_bad_rows: bool = False

    # RL
    advantage_scale: Literal["group", "batch", "none"] = "group"
    drop_uniform_groups: bool = False
    uniform_tolerance: float = Field(default=1e-6, ge=0)
    keep_mean_between: tuple[float, float] | None = None  # inclusive bounds on the group's mean reward

    # SFT (keep_length_truncated and drop_duplicates also apply to DPO candidates)
    min_reward: float | None = None
    per_prompt: int = Field(default=1, ge=1)
    drop_duplicates: bool = True
    max_turns: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    keep_length_truncated: bool = False

    # DPO
    pairing: Literal["best-worst", "all-pairs", "top-bottom-k"] = "best-worst"
    min_margin: float = Field(default=0.0, ge=0)
    top_k: int = Field(default=2, ge=1)
    max_pairs_per_prompt: int | None = Field(default=None, ge=1)
    max_length_ratio: float | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ProcessConfig:
        allowed = FORMATS[self.objective]
        unknown = [f for f in self.formats if f not in allowed]
        if unknown:
            raise ValueError(f"unknown {self.objective} format(s) {unknown}; choose from {list(allowed)}")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"format listed twice: {list(self.formats)}")
        if self.keep_mean_between is not None and self.keep_mean_between[0] > self.keep_mean_between[1]:
            raise ValueError(f"keep_mean_between: low {self.keep_mean_between[0]} > high {self.keep_mean_between[1]}")
        return self

    @property
    def output_formats(self) -> tuple[str, ...]:
        return self.formats or DEFAULT_FORMATS[self.objective]

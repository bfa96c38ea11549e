"""TokensConfig: the options of `rollouts tokens`, most of them reused from `rollouts process`; and the --tokenizer
loader."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from rollouts.errors import ConfigError
from rollouts.options import Cli, field_of
from rollouts.process.config import FilterOptions, ProcessConfig, RolloutFilesConfig
from rollouts.tokens.samples import Policy


class TokensConfig(RolloutFilesConfig):
    """Options of `rollouts tokens`: INPUT, --out and --storage-options as `rollouts process` has them, and the rl
    filter options that decide token records (--on-break, --skip-bad-rows, --advantage-scale) as its fields."""

    on_break: Policy = field_of(FilterOptions, "on_break")
    tokenizer: Annotated[str | None, Cli(metavar="PATH")] = Field(
        None,
        description="a tokenizer.json (or a directory holding one) to classify breaks by decoded text; without "
        "it, breaks are classified from the ids",
    )
    turn_end_id: Annotated[int | None, Cli(metavar="ID")] = Field(
        None,
        ge=0,
        description="the end-of-turn token id splice matches (default: the most common last generated id "
        "of each rollout)",
    )
    skip_bad_rows: bool = field_of(FilterOptions, "skip_bad_rows")
    advantage_scale: Literal["group", "batch", "none"] = field_of(FilterOptions, "advantage_scale")

    def process_config(self) -> ProcessConfig:
        """The rl selection the records are built from (rewards, advantages, groups)."""
        return ProcessConfig(
            objective="rl",
            skip_bad_rows=self.skip_bad_rows,
            advantage_scale=self.advantage_scale,
            on_break=self.on_break,
        )

    def decoder(self) -> Any:
        """The --tokenizer, loaded; None without one."""
        return load_tokenizer(self.tokenizer) if self.tokenizer else None


def load_tokenizer(spec: str) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a directory that holds one."""
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"--tokenizer {spec}: no tokenizer.json there (pass the file, or the model directory)")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises plain Exception for a bad file
        raise ConfigError(f"--tokenizer {spec}: not a tokenizers JSON file ({exc})") from exc

"""The trainers' own code on our files: a tiny random Qwen2 model and a tokenizer built here, no download.

The tokenizer is the simulated server's BPE (`rollouts/sim/tokenizer.json`) with Qwen2.5's chat template as TRL ships
it (`trl/chat_templates/qwen2_5.jinja`, which TRL recognises to swap in its training template with generation
markers for `assistant_only_loss`).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def trainer_module(name: str) -> ModuleType:
    """A trainer's package; without the `trainers` extra its tests are skipped, except where the environment asks
    for them (`.ci/run` sets ROLLOUTS_REQUIRE_TRAINERS=1, so a missing package fails CI instead of skipping)."""
    if os.environ.get("ROLLOUTS_REQUIRE_TRAINERS"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


def nemo_rl_module(name: str) -> ModuleType:
    """A module of NeMo RL, from a source checkout named by NEMO_RL_SRC (its `nemo_rl/` folder's parent).

    NeMo RL has no installable release: the `nemo-rl` on PyPI is a 7 KB placeholder ("not functional"), the real
    package lives only in its repository and declares Python >= 3.13.14, torch 2.11, ray, wandb and CUDA packages. Its
    data modules import on this Python with the `trainers` extra plus soundfile, absl-py, pyzmq and nvidia-ml-py. So
    these tests run where a checkout is given, and are skipped elsewhere (CI included, since it cannot fetch one); with
    NEMO_RL_SRC set, a module that does not import fails the test instead of skipping it (CONTRIBUTING.md says how).
    """
    source = os.environ.get("NEMO_RL_SRC")
    if not source:
        pytest.skip(
            "NeMo RL is not installable from a registry: set NEMO_RL_SRC to a checkout (docs/training-files.md)",
            allow_module_level=True,
        )
    if source not in sys.path:
        sys.path.insert(0, source)
    return importlib.import_module(name)


trainer_module("torch")
transformers = trainer_module("transformers")
trl = trainer_module("trl")

ROOT = Path(__file__).resolve().parents[2]
GYM = str(ROOT / "tests" / "fixtures" / "process" / "gym.jsonl")


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(ROOT / "rollouts" / "sim" / "tokenizer.json"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    return tok


@pytest.fixture(scope="session")
def model(tokenizer: Any) -> Any:
    import torch

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return transformers.Qwen2ForCausalLM(config)


def trained_text(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of tokens under the loss (label != -100), in order."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != -100
    return [tokenizer.decode(run) for run in runs]

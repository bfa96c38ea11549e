"""SFT and DPO rows rendered through real chat templates (shipped in TRL's wheel, committed as fixtures), the way
transformers' `apply_chat_template` renders them: None-valued message keys dropped, a sandboxed jinja2 environment
with `trim_blocks`/`lstrip_blocks`, the `{% generation %}` tag, `loopcontrols`, and its own `tojson`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rollouts.training import ProcessConfig, process

FIXTURES = Path(__file__).parents[1] / "fixtures"
TEMPLATES = FIXTURES / "chat_templates"
GYM = str(FIXTURES / "process" / "gym.jsonl")
# DeepSeek-V3's original template concatenates `arguments` as text; TRL's training copy (`| tojson`) takes objects
TRL_FLAVOUR = ["deepseekv3_training", "qwen3", "llama3_1"]


class Generation(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers' assistant-mask tag, rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def render(
    name: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime(2026, 12, 1).strftime(fmt))
    template = env.from_string((TEMPLATES / f"{name}.jinja").read_text())
    normalized = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as transformers does
    return template.render(
        messages=normalized, tools=tools, add_generation_prompt=add_generation_prompt, bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("templates")
    sft = process([GYM], ProcessConfig(objective="sft", formats=("openai", "trl")), str(out))
    dpo = process([GYM], ProcessConfig(objective="dpo", formats=("trl",)), str(out))
    read = lambda path: [json.loads(line) for line in Path(path).read_text().splitlines()]  # noqa: E731
    return {
        "sft/openai": read(sft.files["openai"]),
        "sft/trl": read(sft.files["trl"]),
        "dpo/trl": read(dpo.files["trl"]),
    }


@pytest.mark.parametrize("name", TRL_FLAVOUR)
def test_trl_sft_rows_render_with_tool_calls(name: str, outputs: dict[str, list[dict[str, Any]]]) -> None:
    for row in outputs["sft/trl"]:
        text = render(name, row["messages"], row.get("tools"))
        assert row["messages"][-1]["content"] in text
    tool_row = next(r for r in outputs["sft/trl"] if r.get("tools"))
    text = render(name, tool_row["messages"], tool_row["tools"])
    assert "calculator" in text and '"6*7"' in text and "42" in text and "The answer is 42." in text


def test_deepseek_v3_needs_content_on_tool_call_messages(outputs: dict[str, list[dict[str, Any]]]) -> None:
    row = next(r for r in outputs["sft/openai"] if r.get("tools"))  # string arguments: the original template's form
    call = next(m for m in row["messages"] if m.get("tool_calls"))
    assert call["content"] == ""
    text = render("deepseekv3", row["messages"], row["tools"])
    assert "<｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator" in text and '{"expression":"6*7"}' in text
    for broken in (
        {k: v for k, v in call.items() if k != "content"},
        {**call, "content": None},
    ):  # absent, or null (dropped)
        messages = [broken if m is call else m for m in row["messages"]]
        with pytest.raises(jinja2.exceptions.UndefinedError):
            render("deepseekv3", messages, row["tools"])


@pytest.mark.parametrize("name", TRL_FLAVOUR)
def test_trl_dpo_prompt_is_a_prefix_of_prompt_plus_completion(
    name: str, outputs: dict[str, list[dict[str, Any]]]
) -> None:
    # TRL's DPOTrainer tokenizes the prompt with the generation prompt and prompt+chosen without: the completion
    # starts where they stop agreeing, so the rendered prompt must be a prefix of the rendered conversation
    for row in outputs["dpo/trl"]:
        prompt = render(name, row["prompt"], row.get("tools"), add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            full = render(name, row["prompt"] + row[side], row.get("tools"))
            assert full.startswith(prompt.rstrip("\n").removesuffix("<think>").rstrip("\n")), (name, side)
            assert row[side][-1]["content"] in full[len(prompt) - 16 :]

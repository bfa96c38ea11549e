"""The token records' data card: what the check found, what the repair policy did, what was written; JSON and
markdown."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from rollouts.process.card import OutputFile
from rollouts.process.validate import BadRows
from rollouts.report.markdown import header, row
from rollouts.tokens.check import ContiguityMetrics

ACTIONS = {
    "spliced": "breaks repaired by splicing: generated ids kept, only the next prompt's new tokens appended",
    "splice_history_shrank": "of those, splices where the next prompt held the history in fewer tokens than the "
    "generated ids kept (content left out, such as reasoning, or merged re-tokenization): the later calls were "
    "conditioned on that shorter context",
    "splice_history_grew": "of those, splices where the next prompt held the history in more tokens (split "
    "re-tokenization, added template tokens)",
    "splice_fallback_split": "breaks splice could not repair (truncation, or no end-of-turn boundary found): split",
    "split": "breaks that started a new sample",
    "truncated_rollouts": "rollouts cut at their first break (truncate)",
    "dropped_rollouts": "rollouts left out for a break (drop)",
    "calls_dropped": "model calls left out by truncate or drop",
}


class TokenCard(BaseModel):
    """Counts of one conversion; `actions` holds the ACTIONS keys that happened."""

    policy: str
    inputs: list[str] = Field(default_factory=list)
    turn_end_id: int | None = None  # given; otherwise inferred per rollout for splice
    rows_read: int = 0
    bad_rows: BadRows = Field(default_factory=BadRows)  # skipped with --skip-bad-rows
    rollouts_selected: int = 0  # successful rollouts kept by the RL selection
    without_token_ids: int = 0
    malformed: int = 0
    check: ContiguityMetrics = Field(default_factory=ContiguityMetrics)
    actions: dict[str, int] = Field(default_factory=dict)
    rollouts_out: int = 0
    samples_out: int = 0
    generated_tokens_in: int = 0
    generated_tokens_out: int = 0
    generated_tokens_dropped: int = 0
    tokens_out: int = 0
    outputs: list[OutputFile] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def count(self, counts: Counter[str]) -> None:
        for key in ACTIONS:
            if counts.get(key):
                self.actions[key] = self.actions.get(key, 0) + counts[key]
        self.generated_tokens_in += counts.get("generated_in", 0)
        self.generated_tokens_out += counts.get("generated_out", 0)
        self.generated_tokens_dropped += counts.get("generated_dropped", 0)

    def to_markdown(self) -> str:
        c = self.check
        lines = ["# Data card: token records", "", f"Inputs: {', '.join(f'`{i}`' for i in self.inputs)}", ""]
        lines += [f"Policy at a break: **{self.policy}**", "", *header(["", "count"], [False, True])]
        for label, value in (
            ("rows read", self.rows_read),
            ("bad rows skipped", self.bad_rows.count),
            ("rollouts selected (RL)", self.rollouts_selected),
            ("without token ids", self.without_token_ids),
            ("malformed token fields", self.malformed),
            ("with more than one model call", c.multi_call),
            ("contiguous", c.contiguous),
            ("broken", c.broken),
            ("rollouts written", self.rollouts_out),
            ("samples written", self.samples_out),
            ("generated tokens in", self.generated_tokens_in),
            ("generated tokens written", self.generated_tokens_out),
            ("generated tokens dropped", self.generated_tokens_dropped),
            ("tokens written", self.tokens_out),
        ):
            lines.append(row([label, value]))
        lines.append("")
        if self.bad_rows.count:
            lines += ["## Bad rows", "", *[f"- `{e}`" for e in self.bad_rows.examples], ""]
        if c.breaks_by_kind:
            lines += ["## Breaks", "", *header(["kind", "breaks", "rollouts (first break)"], [False, True, True])]
            lines += [row([k, n, c.rollouts_by_first_break.get(k, 0)]) for k, n in c.breaks_by_kind.items()]
            lines += ["", *[f"- `{e}`" for e in c.examples[:5]], ""]
        if self.actions:
            lines += ["## What the policy did", "", *header(["action", "count", "meaning"], [False, True, False])]
            lines += [row([k, n, ACTIONS[k]]) for k, n in self.actions.items()]
            lines.append("")
        if self.outputs:
            lines += ["## Outputs", "", *header(["format", "file", "rows"], [False, False, True])]
            lines += [row([o.format, f"`{o.path}`", o.rows]) for o in self.outputs]
            lines.append("")
        if self.notes:
            lines += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        return "\n".join(lines)

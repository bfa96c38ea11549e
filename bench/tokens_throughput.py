"""Cost of the contiguity check and of token-record conversion on synthetic multi-turn rollouts; prints rollouts/s.

Each rollout has --calls model calls, a prompt of --prompt-tokens growing by each generation and a tool output, and
--broken of the rollouts re-render their first assistant turn with an extra boundary token (a retemplating break).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from rollouts.records import dumps
from rollouts.tokens import contiguity_metrics
from rollouts.training import convert_token_records

EOT = 2


def rollout(rng: random.Random, task: int, index: int, calls: int, prompt_tokens: int, broken: bool) -> dict[str, Any]:
    prompt = [rng.randrange(10, 50_000) for _ in range(prompt_tokens)]
    output: list[dict[str, Any]] = []
    for call in range(calls):
        generation = [rng.randrange(10, 50_000) for _ in range(rng.randint(30, 90))] + [EOT]
        output.append(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "x"}],
                "prompt_token_ids": prompt,
                "generation_token_ids": generation,
                "generation_log_probs": [round(-rng.random(), 4) for _ in generation],
            }
        )
        history = prompt + generation
        if broken and call == 0:
            history = history[:-1] + [3, EOT]
        prompt = history + [rng.randrange(10, 50_000) for _ in range(20)] + [EOT]
    return {
        "responses_create_params": {"input": "q"},
        "response": {"output": output},
        "reward": float(index % 2),
        "_ng_task_index": task,
        "_ng_rollout_index": index,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--broken", type=float, default=0.25, help="fraction of rollouts with a break")
    args = parser.parse_args()
    rng = random.Random(0)
    rows = [
        rollout(rng, i // 8, i % 8, args.calls, args.prompt_tokens, rng.random() < args.broken)
        for i in range(args.rollouts)
    ]
    started = time.perf_counter()
    metrics = contiguity_metrics(rows)
    check_s = time.perf_counter() - started
    print(
        f"check: {args.rollouts / check_s:,.0f} rollouts/s ({1e6 * check_s / args.rollouts:.0f} us each); "
        f"{metrics.contiguous} contiguous, breaks {metrics.breaks_by_kind}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rollouts.jsonl"
        path.write_text("".join(dumps(row) + "\n" for row in rows))
        size = path.stat().st_size
        for policy in ("split", "splice"):
            started = time.perf_counter()
            result = convert_token_records([str(path)], f"{tmp}/{policy}", policy)
            seconds = time.perf_counter() - started
            print(
                f"convert --on-break {policy}: {args.rollouts / seconds:,.0f} rollouts/s, "
                f"{size / seconds / 1e6:.1f} MB/s "
                f"of JSONL in, {result.card.samples_out:,} samples, {result.card.tokens_out:,} tokens"
            )


if __name__ == "__main__":
    main()

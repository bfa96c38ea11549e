"""Train the simulated server's byte-level BPE (`rollouts/sim/tokenizer.json`) from text the simulator itself produces.

    python -m rollouts.sim.train_tokenizer            # rewrites rollouts/sim/tokenizer.json

The corpus is generated, not downloaded: the bundled math prompts, the simulator's answers to them at several
temperatures, tool calls with their JSON arguments, tool outputs, the chat template's scaffolding and a little plain
English. Training is deterministic for a given `tokenizers` version, so the committed file can be rebuilt.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rollouts.sim.answers import ToolSpec, respond
from rollouts.sim.tokens import Turn

HERE = Path(__file__).resolve().parent
PROMPTS = HERE.parent / "data" / "math_prompts.jsonl"
OUT = HERE / "tokenizer.json"
VOCAB_SIZE = 2048
# Added as special tokens: never split, never merged with their neighbours, skipped by decode(skip_special_tokens).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<|turn_end|>",
]
PLAIN = (
    "The quick brown fox jumps over the lazy dog. Who wrote Dune? Frank Herbert wrote it. "
    "Please answer the question, show your work and give the final answer. Answer: A. Answer: B. "
    "Echo: hello world. There is nothing to solve, so I repeat the user's words. "
    "Search the web, look up a city, find the weather in Paris, compute the sum of the numbers."
)
TOOLS = [ToolSpec("calculator", ("expression",)), ToolSpec("search", ("query",)), ToolSpec("lookup", ("q",))]


def _expressions(rng: random.Random) -> Iterator[str]:
    for _ in range(400):
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(1, 20)
        op1, op2 = rng.choice("+-*/"), rng.choice("+-*")
        yield rng.choice([f"{a} {op1} {b}", f"({a} {op2} {b}) * {c}", f"{a} {op1} {b} {op2} {c}"])


def corpus(seed: int = 0) -> Iterator[str]:
    """Deterministic training text."""
    rng = random.Random(seed)
    users = [json.loads(line)["responses_create_params"]["input"] for line in PROMPTS.read_text().splitlines()]
    questions = [message["content"] for messages in users for message in messages]
    questions += [f"What is {expression}?" for expression in _expressions(rng)]
    for question in questions:
        yield question
        for temperature in (0.0, 0.7, 1.4):
            answer = respond([Turn("user", question)], [], rng, temperature)
            yield f"{answer.reasoning}\n{answer.content}"
        call = respond([Turn("user", question)], [rng.choice(TOOLS)], rng, 1.0)
        assert call.tool_call is not None
        yield f"{call.reasoning}\n{call.tool_call.name} {call.tool_call.arguments}"
        result = str(rng.randint(-999, 9999))
        turns = [Turn("user", question), Turn("assistant", "", tool_calls=[call.tool_call]), Turn("tool", result)]
        yield result + "\n" + respond(turns, [], rng, 0.5).content
    for _ in range(50):  # the template's scaffolding, as often as the turns it frames
        for role in ("system", "user", "assistant", "tool"):
            yield f"{role}\n# Tools\ncalculator search lookup\n"
        yield PLAIN


def build(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    tokenizer = build(args.vocab_size)
    args.out.write_text(tokenizer.to_str() + "\n")
    print(f"{args.out}: {tokenizer.get_vocab_size()} tokens, {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()

"""`prepare-prompts`: an example upstream data-prep flow that writes a prompts JSONL to storage and announces it
with a `rollouts.prompts.ready` event, which triggers the collection deployment (see deployments/deploy.py)."""

import json
import random
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import resolve_storage
from flows.events import emit_prompts_ready
from rollouts.storage import Store

DEFAULT_DATA = "./data"


@task(name="write-prompts", cache_policy=NO_CACHE, persist_result=False)
def write_prompts(out: str, dataset: str, rows: int, seed: int, storage_block: str) -> str:
    """Arithmetic prompts with their answers, written whole (one PUT on object stores); returns the file's URL."""
    options: dict[str, Any] = {}
    if storage_block:
        storage = resolve_storage(storage_block)
        out, options = out or storage.url, storage.storage_options
    out = out or DEFAULT_DATA
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        lines.append(
            json.dumps(
                {
                    "responses_create_params": {
                        "input": [
                            {"role": "user", "content": f"What is {a} + {b}? Put the final answer in \\boxed{{}}."}
                        ]
                    },
                    "agent_ref": {"name": "math"},
                    "expected_answer": str(a + b),
                }
            )
        )
    store = Store(out, options)
    store.write_lines(lines, "prompts", f"{dataset}.jsonl")
    return store.url("prompts", f"{dataset}.jsonl")


@flow(name="prepare-prompts", log_prints=False)
def prepare_prompts(
    out: str = "", dataset: str = "arith", rows: int = 32, seed: int = 0, storage_block: str = ""
) -> str:
    """Write `rows` prompts to `<out>/prompts/<dataset>.jsonl` and emit `rollouts.prompts.ready` with its URI.

    Args:
        out: where the prompts go, a local path or fsspec URL; empty: the storage block's URL, else ./data
        dataset: the file's name, and the event's resource (`rollouts.prompts.<dataset>`)
        rows: how many prompts
        seed: seed of the generated arithmetic
        storage_block: a RolloutStorage block: its URL (when `out` is empty) and its filesystem options
    """
    uri = write_prompts(out, dataset, rows, seed, storage_block)
    emit_prompts_ready(uri, rows=rows, dataset=dataset)
    get_run_logger().info("wrote %d prompts to %s and emitted rollouts.prompts.ready", rows, uri)
    return uri


if __name__ == "__main__":
    prepare_prompts()

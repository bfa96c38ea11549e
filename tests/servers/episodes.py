"""Multi-turn tool episodes against the simulated server, through the collector's own ModelClient over loopback HTTP.

Each episode is a rollout row as the collector writes it: Responses-API output items with NeMo Gym's token fields on
the last item of each model call. Every question is answered as user -> tool call -> tool output -> answer.
The server's raw reply bodies are kept per episode (`REPLIES`), so tests compare records with what the server sent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx

from rollouts.client.model import ModelClient
from rollouts.records import rollout_id

REPLIES: dict[str, list[dict[str, Any]]] = {}  # the row's `_episode` -> the server's reply bodies, in call order
CALCULATOR = {
    "type": "function",
    "name": "calculator",
    "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}


def _evaluate(arguments: str) -> str:
    expression = json.loads(arguments).get("expression", "")
    allowed = set("0123456789+-*/() ")
    return str(eval(expression)) if expression and set(expression) <= allowed else "error"  # noqa: S307 - digits only


async def run_episode(
    url: str,
    api: str,
    questions: list[str],
    *,
    task: int = 0,
    index: int = 0,
    sampling: dict[str, Any] | None = None,
    max_calls: int = 8,
) -> dict[str, Any]:
    episode = uuid.uuid4().hex
    replies = REPLIES.setdefault(episode, [])

    async def keep(response: httpx.Response) -> None:
        replies.append(json.loads(await response.aread()))

    async with httpx.AsyncClient(timeout=30, event_hooks={"response": [keep]}) as http:
        client = ModelClient(http, url, "sim-model", api, max_retries=0, return_tokens=True)
        params = {"tools": [CALCULATOR]}
        sampling = {"temperature": 0.7, "seed": 1000 * task + index, **(sampling or {})}
        items: list[dict[str, Any]] = []
        input_items = [{"role": "user", "content": questions[0]}]
        calls = 0
        for question in questions:
            items.append({"role": "user", "content": question})
            while calls < max_calls:
                call = await client.create(items, params, sampling)
                calls += 1
                items.extend(call.output)
                tool_calls = [item for item in call.output if item.get("type") == "function_call"]
                if not tool_calls:
                    break
                for item in tool_calls:
                    items.append(
                        {
                            "type": "function_call_output",
                            "call_id": item["call_id"],
                            "output": _evaluate(item["arguments"]),
                        }
                    )
    output = items[1:]  # everything after the first question, follow-up questions included
    return {
        "responses_create_params": {"input": input_items, "tools": [CALCULATOR]},
        "response": {"output": output, "status": "completed", "usage": {"input_tokens": 0, "output_tokens": 0}},
        "reward": float(index % 2),
        "_ng_task_index": task,
        "_ng_rollout_index": index,
        "rollout_id": rollout_id("episodes", task, index),
        "status": "ok",
        "_episode": episode,
    }


def server_generated(row: dict[str, Any]) -> tuple[list[int], list[float]]:
    """The generated ids and log-probabilities exactly as the server's replies for this rollout carried them."""
    ids: list[int] = []
    values: list[float] = []
    for reply in REPLIES[row["_episode"]]:
        if "choices" in reply:
            choice = reply["choices"][0]
            ids += choice["token_ids"]
            values += [entry["logprob"] for entry in choice["logprobs"]["content"]]
        else:
            ids += reply["output"][-1]["generation_token_ids"]
            values += reply["output"][-1]["generation_log_probs"]
    return ids, values


def questions(task: int, turns: int = 1) -> list[str]:
    """`turns` arithmetic questions for one task, each answered with one calculator call."""
    return [f"What is {task + turn + 2} * ({task + 5} + {turn})?" for turn in range(turns)]


def episodes(
    url: str, api: str, *, tasks: int = 1, repeats: int = 1, turns: int = 1, sampling: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """tasks x repeats episodes of `turns` questions each (2 model calls per question)."""

    async def run_all() -> list[dict[str, Any]]:
        jobs = [
            run_episode(url, api, questions(t, turns), task=t, index=i, sampling=sampling)
            for t in range(tasks)
            for i in range(repeats)
        ]
        return list(await asyncio.gather(*jobs))

    return asyncio.run(run_all())

"""The yardstick client: plain aiohttp against the simulated server, with the collector's math check and nothing else.

    python bench/bare_client.py --url http://127.0.0.1:PORT/v1 --parallel 256 --rollouts 10240

It sends what the collector sends for the benchmark's prompts (same model, messages, temperature, top_p, seed)
from `--parallel` workers sharing one aiohttp session, parses each reply with orjson and scores it with the math
environment's own `extract_answer` / `answers_match`. No Prefect, no files, no retries. It prints one
`RESULT {json}` line: steady rate and CPU per rollout inside the window from the first request to the last response.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_window import CpuSampler  # noqa: E402
from rollouts.envs.math_env import answers_match, extract_answer  # noqa: E402


def prompt_text(i: int) -> tuple[str, str]:
    """The benchmark's prompt i and its expected answer (the collector benchmark writes the same rows)."""
    return f"What is {i} + {i + 7}?", str(2 * i + 7)


async def collect(url: str, parallel: int, prompts: int, repeats: int) -> dict[str, float]:
    todo = ((i, r) for i in range(prompts) for r in range(repeats))
    first, last, ok, reward = [float("inf")], [0.0], [0], [0.0]
    connector = aiohttp.TCPConnector(limit=parallel)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        endpoint = f"{url}/chat/completions"

        async def worker() -> None:
            for i, r in todo:
                question, expected = prompt_text(i)
                body = {
                    "model": "sim-model",
                    "messages": [{"role": "user", "content": question}],
                    "temperature": 0.7,
                    "top_p": 1.0,
                    "seed": 1 + r,
                }
                first[0] = min(first[0], time.time())
                async with session.post(
                    endpoint, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
                ) as response:
                    data = orjson.loads(await response.read())
                if not last[0]:
                    print("STEADY", flush=True)  # the benchmark may start a profiler now
                last[0] = time.time()
                if response.status != 200:
                    continue
                text = data["choices"][0]["message"].get("content") or ""
                given = extract_answer(text)
                ok[0] += 1
                reward[0] += float(given is not None and answers_match(given, expected))

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return {"first": first[0], "last": last[0], "ok": ok[0], "reward": reward[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=10240)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (when installed)")
    args = parser.parse_args()
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    with CpuSampler() as sampler:
        started = time.time()
        got = runner(collect(args.url, args.parallel, args.rollouts // args.repeats, args.repeats))
    window = got["last"] - got["first"]
    cpu, _ = sampler.cpu_between(got["first"], got["last"])
    print(
        "RESULT "
        + json.dumps(
            {
                "rollouts": got["ok"],
                "steady_rps": got["ok"] / window,
                "cpu_ms_per_rollout": 1000 * cpu / max(got["ok"], 1),
                "mean_reward": got["reward"] / max(got["ok"], 1),
                "startup_s": got["first"] - started,
                "window_s": window,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

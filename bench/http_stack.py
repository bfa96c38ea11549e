"""Benchmark: CPU per model call of the HTTP stacks, paired in one process against the simulated server.

    python bench/http_stack.py                       # 256 in flight, 0 ms latency, 3 rounds of each stack
    python bench/http_stack.py --parallel 1024 --loop uvloop

Stacks: `bare` (aiohttp, orjson, as bench/bare_client.py), `httpx-aiohttp` (rollouts.client.model.ModelClient on
httpx.AsyncClient over httpx_aiohttp.AiohttpTransport, as the collector built it before rollouts/client/transport.py),
`collector` (ModelClient on `rollouts.client.model.http_client()`: CollectorHTTPClient over CollectorTransport). Rounds
alternate A B C A B C..., so a drift of the machine's speed hits every stack alike; CPU is the process's
`time.process_time()` over each round, the rate is calls / round wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_window import yardstick  # noqa: E402
from rollouts.client.model import ModelClient, http_client  # noqa: E402


async def bare(url: str, parallel: int, calls: int) -> None:
    todo = iter(range(calls))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=parallel)) as session:

        async def worker() -> None:
            for i in todo:
                body = {
                    "model": "sim-model",
                    "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
                    "temperature": 0.7,
                    "top_p": 1.0,
                    "seed": i,
                }
                async with session.post(
                    f"{url}/chat/completions", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
                ) as response:
                    orjson.loads(await response.read())

        await asyncio.gather(*(worker() for _ in range(parallel)))


def plain_client(parallel: int) -> httpx.AsyncClient:
    """The stack as it was: httpx.AsyncClient over httpx-aiohttp's own transport (a cookie-free aiohttp session)."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)

    def make_session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=parallel, keepalive_timeout=limits.keepalive_expiry)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, client=make_session),
        timeout=httpx.Timeout(600),
        headers={"Content-Type": "application/json"},
    )


async def through_model_client(http: httpx.AsyncClient, url: str, parallel: int, calls: int) -> None:
    client = ModelClient(http, url, "sim-model", "chat", max_retries=0)
    todo = iter(range(calls))

    async def worker() -> None:
        for i in todo:
            await client.create(
                [{"role": "user", "content": f"What is {i} + 1?"}], {}, {"temperature": 0.7, "top_p": 1.0, "seed": i}
            )

    async with http:
        await asyncio.gather(*(worker() for _ in range(parallel)))


STACKS = {
    "bare": lambda url, p, n: bare(url, p, n),
    "httpx-aiohttp": lambda url, p, n: through_model_client(plain_client(p), url, p, n),
    "collector": lambda url, p, n: through_model_client(http_client(p, 600.0), url, p, n),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--loop", default="asyncio", help="asyncio, uvloop, or both: asyncio,uvloop (paired rounds)")
    parser.add_argument("--stacks", default=",".join(STACKS))
    args = parser.parse_args()
    from rollouts.sim.launch import start_sim_server

    loops = {"asyncio": asyncio.new_event_loop}
    if "uvloop" in args.loop:
        import uvloop

        loops["uvloop"] = uvloop.new_event_loop
    names = [(stack, loop) for loop in args.loop.split(",") for stack in args.stacks.split(",")]
    cpu: dict[tuple[str, str], list[float]] = {n: [] for n in names}
    rate: dict[tuple[str, str], list[float]] = {n: [] for n in names}
    print(f"CPU yardstick (fixed pure-Python loop): {yardstick():.0f} ms")
    with start_sim_server(latency_ms=args.latency_ms, seed=0) as server:
        for _ in range(args.rounds):
            for name in names:
                loop = loops[name[1]]()
                c0, t0 = time.process_time(), time.perf_counter()
                loop.run_until_complete(STACKS[name[0]](server.url, args.parallel, args.calls))
                cpu[name].append(1e6 * (time.process_time() - c0) / args.calls)
                rate[name].append(args.calls / (time.perf_counter() - t0))
                loop.close()
    base = statistics.median(cpu[("bare", "asyncio")]) if ("bare", "asyncio") in cpu else None
    print(
        f"{args.parallel} in flight, {args.latency_ms:.0f} ms latency, "
        f"{args.calls} calls x {args.rounds} rounds (medians)"
    )
    print(f"{'stack':<14} {'loop':<8} {'CPU us/call':>11} {'/ bare on asyncio':>17} {'calls/s':>8}")
    for name in names:
        median = statistics.median(cpu[name])
        ratio = f"{median / base:17.2f}" if base else ""
        print(f"{name[0]:<14} {name[1]:<8} {median:>11.0f} {ratio} {statistics.median(rate[name]):>8.0f}")


if __name__ == "__main__":
    main()

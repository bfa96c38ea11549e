"""Throughput of the simulated server: 1024 concurrent chat requests at 200 ms latency, aiohttp client; prints req/s."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import aiohttp

from rollouts.sim import start_sim_server


async def _worker(
    session: aiohttp.ClientSession, url: str, worker: int, count: int, statuses: list[int], tokens: bool = True
) -> None:
    for index in range(count):
        body = {
            "model": "sim-model",
            "messages": [{"role": "user", "content": f"What is {worker} + {index}?"}],
            "temperature": 0.7,
            "return_token_ids": tokens,
        }
        async with session.post(f"{url}/chat/completions", json=body) as response:
            await response.read()
            statuses.append(response.status)


async def run(
    url: str, concurrency: int, per_worker: int, tokens: bool, pid: int
) -> tuple[int, float, list[int], float]:
    """(requests, seconds, statuses, server CPU seconds) of the timed part, after a warm-up that opens the connections
    (and loads the server's tokenizer, a one-time cost)."""
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(_worker(session, url, w, 1, [], tokens) for w in range(concurrency)))
        cpu_before = _cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(_worker(session, url, w, per_worker, statuses, tokens) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(pid) - cpu_before
    return len(statuses), elapsed, statuses, cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report the server's cost per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1024)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--per-worker", type=int, default=20, help="requests each concurrent worker sends")
    parser.add_argument(
        "--tokens",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask for token ids (return_token_ids), which runs the server's real tokenizer",
    )
    args = parser.parse_args()
    with start_sim_server(latency_ms=args.latency_ms) as server:
        total, elapsed, statuses, server_cpu = asyncio.run(
            run(server.url, args.concurrency, args.per_worker, args.tokens, server.process.pid)
        )
        stats = server.stats()
    ideal = args.concurrency / (args.latency_ms / 1000) if args.latency_ms else float("inf")
    ok = sum(status == 200 for status in statuses)
    print(
        f"{total} requests ({ok} ok) in {elapsed:.2f} s: {total / elapsed:,.0f} req/s "
        f"(ceiling {ideal:,.0f} req/s at {args.concurrency} in flight); server max_in_flight={stats['max_in_flight']}, "
        f"server CPU {1e6 * server_cpu / total:.0f} us/request"
    )


if __name__ == "__main__":
    main()

"""Collect a planned run in the calling event loop, without Prefect: generate then verify each shard in turn.

For tests, benchmarks and notebooks; the flow does the same through its tasks and the process's collector runtime.
"""

from __future__ import annotations

from rollouts.collector.limits import InflightLimiter
from rollouts.collector.progress import ProgressBoard
from rollouts.collector.runtime import SharedClients
from rollouts.run import RunPlan, ShardResult
from rollouts.stages.generate import generate_shard
from rollouts.stages.verify import verify_shard


async def collect_plan(plan: RunPlan, board: ProgressBoard | None = None) -> list[ShardResult]:
    board = board or ProgressBoard()
    clients = SharedClients()
    limiter = InflightLimiter(plan.run.config.parallel_per_process)
    results = []
    try:
        for shard in plan.shards:
            await generate_shard(plan.run, shard.shard, clients=clients, limiter=limiter, board=board)
            results.append(await verify_shard(plan.run, shard.shard, board=board))
    finally:
        await clients.close_all()
    return results

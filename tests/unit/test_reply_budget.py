"""The collector's budget for reply bodies being read: readers past it wait, the oldest never does, none waits for
ever, and a cancelled reader gives its bytes back."""

from __future__ import annotations

import asyncio
import random

from rollouts.client.bodies import ReplyBudget, reply_budget


async def test_a_reader_past_the_budget_waits_until_the_oldest_gives_its_bytes_back() -> None:
    budget = ReplyBudget(limit=100)
    oldest, other = object(), object()
    await budget.take(oldest, 80)
    waiting = asyncio.create_task(budget.take(other, 30))
    await asyncio.sleep(0)
    assert not waiting.done() and budget.waits == 1
    await budget.take(oldest, 50)  # the oldest goes on past the budget: someone must finish
    assert budget.used == 130 and not waiting.done()
    budget.give_back(oldest)
    await waiting
    assert budget.used == 30 and budget.peak == 130
    budget.give_back(other)
    assert budget.used == 0


async def test_many_readers_all_finish_and_hold_at_most_the_budget_plus_one_reply() -> None:
    budget, rng = ReplyBudget(limit=1_000), random.Random(0)

    async def read(size: int) -> None:
        reader = object()
        try:
            for _ in range(size // 100):
                await budget.take(reader, 100)
                await asyncio.sleep(0)
        finally:
            budget.give_back(reader)

    sizes = [rng.randrange(100, 3_000, 100) for _ in range(64)]
    await asyncio.wait_for(asyncio.gather(*(read(n) for n in sizes)), timeout=30)
    assert budget.used == 0 and budget.waits > 0
    assert budget.peak <= budget.limit + max(sizes)


async def test_a_reader_cancelled_while_waiting_leaves_the_budget_whole() -> None:
    budget = ReplyBudget(limit=10)
    first, second = object(), object()
    await budget.take(first, 10)
    waiting = asyncio.create_task(budget.take(second, 5))
    await asyncio.sleep(0)
    waiting.cancel()  # its request deadline passed
    await asyncio.gather(waiting, return_exceptions=True)
    budget.give_back(second)
    budget.give_back(first)
    assert budget.used == 0
    await budget.take(second, 10)  # the budget still works
    assert budget.used == 10


async def test_one_budget_per_event_loop_with_the_run_s_limit() -> None:
    budget = reply_budget(4096)
    assert reply_budget() is budget and budget.limit == 4096

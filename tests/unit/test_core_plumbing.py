"""Core plumbing without Prefect: the limiter, the appender, config identity, error pickling (the import boundaries
are checked in test_import_boundaries.py)."""

from __future__ import annotations

import asyncio
import pickle
import threading

import pytest
from pydantic import ValidationError

from rollouts.collector.limits import InflightLimiter
from rollouts.config import CollectConfig, parse_remote_envs
from rollouts.errors import ConfigError, ProviderError
from rollouts.storage import Store


def test_limiter_bounds_in_flight_across_event_loops_in_threads():
    limiter = InflightLimiter(5)
    peak, current, lock = [0], [0], threading.Lock()

    async def one():
        await limiter.acquire()
        try:
            with lock:
                current[0] += 1
                peak[0] = max(peak[0], current[0])
            await asyncio.sleep(0.002)
        finally:
            with lock:
                current[0] -= 1
            limiter.release()

    async def many():
        await asyncio.gather(*(one() for _ in range(60)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 5 and limiter.in_flight == 0


async def test_limiter_survives_cancelled_waiters():
    limiter = InflightLimiter(1)
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    limiter.release()
    await asyncio.sleep(0.01)
    await asyncio.wait_for(limiter.acquire(), 1)  # the slot was not lost
    assert limiter.in_flight == 1


def test_appender_appends_and_cuts_a_torn_tail(tmp_path):
    store = Store(str(tmp_path))
    appender = store.appender("rollouts", "00000.jsonl")
    appender.write('{"a": 1}')
    appender.flush()
    appender.close()
    with open(tmp_path / "rollouts" / "00000.jsonl", "a") as fh:
        fh.write('{"a": 2')  # a crash mid-line
    assert list(store.iter_lines("rollouts", "00000.jsonl")) == ['{"a": 1}\n']
    appender = store.appender("rollouts", "00000.jsonl")
    appender.write('{"a": 3}')
    appender.commit()
    assert (tmp_path / "rollouts" / "00000.jsonl").read_text() == '{"a": 1}\n{"a": 3}\n'


def base_config(**kw) -> CollectConfig:
    return CollectConfig(**{"input": "p.jsonl", "model_url": "http://x/v1", "model": "m", **kw})


def test_identity_ignores_operational_options_but_not_sampling():
    a = base_config()
    assert a.digest("d") == base_config(parallel=9, out="s3://b/r", max_retries=0, model_url="http://y/v1").digest("d")
    assert a.digest("d") != base_config(temperature=0.3).digest("d")
    assert a.digest("d") != a.digest("other input")
    assert base_config(objective="sft").repeats == 2 and base_config(objective="rl,dpo").objective == ["rl", "dpo"]


def test_config_errors_are_clear():
    with pytest.raises(ValidationError, match="must start with http"):
        base_config(model_url="localhost:8000")
    with pytest.raises(ValidationError, match="greater than --start"):
        base_config(start=5, end=5)
    with pytest.raises(ValidationError):
        base_config(objective="ppo")
    with pytest.raises(ConfigError, match="expected NAME=URL"):
        parse_remote_envs(["judge"])
    assert parse_remote_envs(["judge=http://127.0.0.1:9/"]) == {"judge": "http://127.0.0.1:9"}


def test_errors_pickle_with_their_fields():
    error = pickle.loads(pickle.dumps(ProviderError("boom", status_code=503, retryable=True)))
    assert (type(error), error.message, error.status_code, error.retryable) == (ProviderError, "boom", 503, True)


def test_a_pipe_in_a_data_card_cell_stays_inside_its_cell():
    from rollouts.process.card import DataCard, Drop

    card = DataCard(
        objective="sft", inputs=["in.jsonl"], rows_read=1, dropped=[Drop(rule="custom|rule", count=1, why="a | b")]
    )
    table = [line for line in card.to_markdown().splitlines() if "custom" in line]
    assert table == ["| custom\\|rule | 1 | a \\| b |"]

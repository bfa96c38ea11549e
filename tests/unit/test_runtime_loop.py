"""The collector loop's event loop choice (uvloop when installed) and its garbage-collection settings."""

from __future__ import annotations

import asyncio
import gc
import importlib.util

import pytest

from rollouts.collector.runtime import EVENT_LOOP_ENV, BackgroundLoop, new_event_loop, relax_garbage_collection
from rollouts.errors import ConfigError

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    return type(loop).__module__.split(".")[0]


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_uvloop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    loop = new_event_loop()
    try:
        assert loop_kind(loop) == "uvloop"
    finally:
        loop.close()


def test_asyncio_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    loop = new_event_loop()
    try:
        assert loop_kind(loop) == "asyncio"
    finally:
        loop.close()


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    loop = new_event_loop()
    try:
        assert loop_kind(loop) == "asyncio"
    finally:
        loop.close()


def test_a_bad_choice_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(ConfigError, match="ROLLOUTS_EVENT_LOOP='trio'"):
        new_event_loop()


def test_requiring_a_missing_uvloop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_uvloop(name: str, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    with pytest.raises(ConfigError, match="pip install uvloop"):
        new_event_loop()


@pytest.mark.parametrize("choice", ["asyncio"] + (["uvloop"] if HAS_UVLOOP else []))
def test_background_loop_runs_coroutines_from_other_threads(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, choice)
    background = BackgroundLoop(name=f"test-{choice}")

    async def work(x: int) -> tuple[int, str]:
        await asyncio.sleep(0)
        return x * 2, loop_kind(asyncio.get_running_loop())

    assert background.run(work(21)) == (42, choice)
    background.loop.call_soon_threadsafe(background.loop.stop)


def test_relaxed_collection_thresholds_and_frozen_heap() -> None:
    before = gc.get_threshold()
    try:
        relax_garbage_collection(freeze=False)
        gen0, gen1, gen2 = gc.get_threshold()
        assert gen0 >= 100_000 and gen1 >= 20 and gen2 >= 100
        relax_garbage_collection(freeze=True)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

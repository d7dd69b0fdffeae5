"""The loop Pond's processes run on (services.runtime.loop): uvloop unless
POND_EVENT_LOOP=asyncio, and a clear refusal of anything else."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.runtime import loop


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("POND_EVENT_LOOP", raising=False)
    assert isinstance(loop.run(_running_loop()), uvloop.Loop)
    made = loop.new_event_loop()
    assert isinstance(made, uvloop.Loop)
    made.close()


def test_asyncios_own_loop_when_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POND_EVENT_LOOP", "asyncio")
    ran = loop.run(_running_loop())
    assert not isinstance(ran, uvloop.Loop) and isinstance(ran, asyncio.BaseEventLoop)
    made = loop.new_event_loop()
    assert not isinstance(made, uvloop.Loop)
    made.close()


def test_an_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POND_EVENT_LOOP", "trio")
    coro = _running_loop()
    with pytest.raises(SystemExit, match="POND_EVENT_LOOP is one of uvloop, asyncio"):
        loop.run(coro)
    coro.close()


async def test_the_tests_run_on_the_production_loop():
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop) == (loop.loop_name() == "uvloop")

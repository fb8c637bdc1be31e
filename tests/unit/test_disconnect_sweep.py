"""until_disconnect's sweep (aigw.api.disconnect): a watcher only for work still running after WATCH_AFTER_S, one
sweep timer for many requests, and nothing of a finished request kept by the queue."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from starlette.types import Message

from aigw.api import disconnect
from aigw.api.disconnect import WATCH_AFTER_S, until_disconnect
from aigw.errors import ClientDisconnected


class Channel:
    """An ASGI receive channel that records reads; ``leave()`` delivers http.disconnect."""

    def __init__(self) -> None:
        self.reads = 0
        self._gone = asyncio.Event()

    async def __call__(self) -> Message:
        self.reads += 1
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self._gone.set()


async def test_fast_work_never_reads_the_channel_and_slow_work_is_cancelled_on_leaving() -> None:
    fast = [Channel() for _ in range(50)]
    results = await asyncio.gather(*(until_disconnect(ch, asyncio.sleep(0.01, result=i)) for i, ch in enumerate(fast)))
    assert results == list(range(50))
    slow = Channel()
    started = asyncio.get_running_loop().time()
    job = asyncio.ensure_future(until_disconnect(slow, asyncio.sleep(30)))
    while slow.reads == 0:
        await asyncio.sleep(0.01)
    assert asyncio.get_running_loop().time() - started >= WATCH_AFTER_S
    await asyncio.sleep(WATCH_AFTER_S)  # the fast ones' deadlines have all passed and been swept
    assert all(ch.reads == 0 for ch in fast), "work done before its deadline is never watched"
    slow.leave()
    with pytest.raises(ClientDisconnected):
        await job


async def test_one_sweep_timer_for_many_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    timers = 0
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: object, *args: object, **kw: object) -> asyncio.TimerHandle:
        nonlocal timers
        if getattr(callback, "__qualname__", "") == "_Sweeper._sweep":
            timers += 1
        return real_call_at(when, callback, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    channels = [Channel() for _ in range(200)]
    await asyncio.gather(*(until_disconnect(ch, asyncio.sleep(0.001)) for ch in channels))
    await asyncio.sleep(WATCH_AFTER_S + 2 * disconnect.SWEEP_S)
    assert 1 <= timers <= 3, timers


async def test_a_finished_request_is_not_kept_alive_by_the_queue() -> None:
    ch = Channel()
    ref = weakref.ref(ch)
    await until_disconnect(ch, asyncio.sleep(0))
    del ch
    gc.collect()
    assert ref() is None


def test_a_closed_loop_is_not_kept_alive_by_its_sweeper() -> None:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(until_disconnect(Channel(), asyncio.sleep(0)))
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None

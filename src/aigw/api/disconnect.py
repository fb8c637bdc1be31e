"""Cancel the work of a request whose client went away (before any response byte was sent).

A client that gives up on a slow completion should not leave the upstream call running until its timeout. A
watcher reads the ASGI ``receive`` channel (the body has been read already, so the next message can only be
``http.disconnect``) and cancels the handler's task; the handler then sees ``ClientDisconnected``.

The watcher is started only once the work has run for ``WATCH_AFTER_S``: fast requests (most of them, and every
cache hit) pay for no task, and a slow LLM call is still cancelled within that delay (plus at most ``SWEEP_S``).
Nor does each request set a timer: requests are queued in arrival order, so their start deadlines are in order
too, and one sweep per event loop, at most every ``SWEEP_S``, starts the watchers of those still running.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from aigw.errors import ClientDisconnected

T = TypeVar("T")
WATCH_AFTER_S = 0.2
SWEEP_S = 0.05


class _Watched:
    __slots__ = ("due", "finished", "gone", "receive", "task", "watcher")

    def __init__(self, task: asyncio.Task[object], receive: Receive, due: float) -> None:
        self.task: asyncio.Task[object] | None = task
        self.receive: Receive | None = receive
        self.due = due
        self.finished = False
        self.gone = False
        self.watcher: asyncio.Task[None] | None = None

    async def watch(self) -> None:
        receive, task = self.receive, self.task
        assert receive is not None and task is not None  # only watched while unfinished
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        task.cancel()

    def finish(self) -> None:
        """The work is over: no watcher from now on, and the request's objects are not kept alive by the queue."""
        self.finished = True
        self.task = self.receive = None
        if self.watcher is not None:
            self.watcher.cancel()


class _Sweeper:
    """One per event loop. It does not hold its loop: it is the value of a weak-keyed mapping keyed by the loop."""

    def __init__(self) -> None:
        self._queue: deque[_Watched] = deque()
        self._armed = False  # not the timer handle: it holds the loop, which would keep our weak key alive

    def add(self, loop: asyncio.AbstractEventLoop, item: _Watched) -> None:
        self._queue.append(item)
        if not self._armed:
            self._armed = True
            loop.call_at(item.due, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._armed = False
        now = loop.time()
        queue = self._queue
        while queue and queue[0].due <= now:
            item = queue.popleft()
            if not item.finished:
                item.watcher = loop.create_task(item.watch())
        if queue:
            self._armed = True
            loop.call_at(max(queue[0].due, now + SWEEP_S), self._sweep, loop)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = weakref.WeakKeyDictionary()


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        sweeper = _sweepers[loop] = _Sweeper()
    item = _Watched(task, receive, loop.time() + WATCH_AFTER_S)
    sweeper.add(loop, item)
    try:
        return await work
    except asyncio.CancelledError:
        if not item.gone:
            raise
        task.uncancel()
        gone = ClientDisconnected("The client closed the connection")
        gone.metered = True  # the gateway recorded the cancelled request (its ledger row and metrics) already
        raise gone from None
    finally:
        item.finish()

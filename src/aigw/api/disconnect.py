"""Cancel the work of a request whose client went away (before any response byte was sent).

A client that gives up on a slow completion should not leave the upstream call running until its timeout. A
watcher reads the ASGI ``receive`` channel (the body has been read already, so the next message can only be
``http.disconnect``) and cancels the handler's task; the handler then sees ``ClientDisconnected``.

The watcher is started only once the work has run for ``WATCH_AFTER_S``: fast requests (most of them, and every
cache hit) pay for one timer instead of a task, and a slow LLM call is still cancelled within that delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from aigw.errors import ClientDisconnected

T = TypeVar("T")
WATCH_AFTER_S = 0.2


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    state: dict[str, object] = {}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        state["gone"] = True
        task.cancel()

    def start_watching() -> None:
        state["watcher"] = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if "gone" not in state:
            raise
        task.uncancel()
        gone = ClientDisconnected("The client closed the connection")
        gone.metered = True  # the gateway recorded the cancelled request (its ledger row and metrics) already
        raise gone from None
    finally:
        timer.cancel()
        watcher = state.get("watcher")
        if isinstance(watcher, asyncio.Task):
            watcher.cancel()

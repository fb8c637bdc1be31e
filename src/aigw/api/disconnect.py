"""Cancel the work of a request whose client went away (before any response byte was sent).

A client that gives up on a slow completion should not leave the upstream call running until its timeout. One
watcher task per request reads the ASGI ``receive`` channel (the body has been read already, so the next message
can only be ``http.disconnect``) and cancels the handler's task; the handler sees ``ClientDisconnected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from aigw.errors import ClientDisconnected

T = TypeVar("T")


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("The client closed the connection") from None
    finally:
        watcher.cancel()

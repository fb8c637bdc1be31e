"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, with a response's head written together with its body.

uvicorn writes a response's status line and headers as soon as the app sends ``http.response.start``, and its body
on ``http.response.body``: two system calls, and two wake-ups of the client, for every JSON response. When the head
announces a ``content-length`` (a whole body follows: Starlette's ``Response`` sends it in the same step), it is
held and goes out in the body's write instead, with no callback or timer: the write that carries the body carries
the head. Streams (chunked) and anything uvicorn writes otherwise go out as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1.1 "
_INTERIM = b"HTTP/1.1 1"  # 1xx: 100 Continue, written as it comes
_JOIN_MAX = 64 * 1024


class _HeadWithBody:
    """The transport as one request-response cycle sees it (``write``, ``close``, ``is_closing``)."""

    __slots__ = ("_headed", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._headed = False  # the cycle's final head has been written or held: all later writes are its body

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_MAX:
                self._transport.write(held + data)
                return
            self._transport.write(held)  # a large body is not copied to save one system call
        elif not self._headed and data.startswith(_HEAD):
            # Only the cycle's own head (its body may look like one: message/http), and not a 100 Continue.
            if data.startswith(_INTERIM):
                self._transport.write(data)
                return
            self._headed = True
            if b"\r\ncontent-length: " in data:  # a whole body follows: its write is next
                self._held = data
                return
        self._transport.write(data)

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:  # the body never came (the app failed): the client gets what it would have got
            self._transport.write(held)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadWithBodyProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # Not for HEAD: uvicorn writes no body for it, so a held head would never leave.
        if cycle is not None and cycle.transport is self.transport and cycle.scope["method"] != "HEAD":
            cycle.transport = _HeadWithBody(self.transport)  # type: ignore[assignment]

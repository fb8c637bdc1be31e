"""SSE responses exactly as OpenAI frames them: ``data: {chunk}\\n\\n`` … ``data: [DONE]\\n\\n``.

The client's disconnect is watched concurrently with the upstream, so a client that goes away cancels the
upstream read at once (not only at the next chunk). A failure after the commit point ends the stream with an
OpenAI-shaped ``data: {"error": ...}`` event and no ``[DONE]``: a broken stream must never look complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import Message, Receive, Scope, Send

from aigw.api.errors import error_body
from aigw.errors import GatewayError, UpstreamError
from aigw.gateway import CLIENT_CLOSED
from aigw.streams import ChatStream

DONE = b"data: [DONE]\n\n"
log = logging.getLogger("aigw.api")


class SSEResponse:
    def __init__(self, stream: ChatStream, headers: dict[str, str]) -> None:
        self._stream = stream
        self._headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        self._headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump, watch):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _pump(self, send: Send) -> None:
        stream = self._stream
        status: int = CLIENT_CLOSED
        error: GatewayError | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            try:
                async for batch in stream.batches():
                    body = b"".join([b"data: " + chunk + b"\n\n" for chunk in batch])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except UpstreamError as err:
                status, error = 502, err
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + error_body(err) + b"\n\n",
                        "more_body": False,
                    }
                )
                return
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
            status = 200
        except OSError:
            pass  # the client went away while we were writing (ASGI spec 2.4)
        except Exception as exc:  # a bug after the commit point: still end the stream with an explicit error
            log.error("stream failed after commit: %s", type(exc).__name__, exc_info=exc)
            error = exc if isinstance(exc, GatewayError) else GatewayError("internal error", code="internal_error")
            status = error.http_status
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"data: " + error_body(error) + b"\n\n"})
        finally:
            await asyncio.shield(stream.close(status=status, error=error))


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return

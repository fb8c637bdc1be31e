"""A lean HTTP/1.1 client for the non-streaming upstream exchange: keep-alive connections per origin, one request
at a time on each, the response parsed by httptools (llhttp, the parser uvicorn uses).

Why not aiohttp here: its ClientSession costs ~68 µs of CPU per request on the bench VM (request and response
objects, cookie and redirect machinery, a timer per read), a sixth of the gateway's whole budget; this client does
the one thing the gateway needs for ~20 µs. Streams stay on aiohttp (transport.UpstreamStream). See ADR 0011.

Semantics kept from the aiohttp setup it replaces: no proxy from the environment, no cookies, no redirects
followed, identity or gzip/deflate bodies, a request never retried (a failed attempt is the fallback chain's
business). Errors are the exceptions listed under :class:`HttpError`; transport.py maps them to the gateway's.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import httptools

__all__ = ["ConnectFailed", "Disconnected", "Http1Pool", "HttpError", "Response", "TimedOut"]


class HttpError(Exception):
    """Base of the client's failures."""


class ConnectFailed(HttpError):
    """No connection could be made (refused, unreachable, DNS, TLS handshake)."""


class Disconnected(HttpError):
    """The connection broke or the server closed it before the response was complete, or sent a malformed one."""


class TimedOut(HttpError):
    """A timeout passed (the message says which)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


_CTX: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _CTX
    if _CTX is None:
        _CTX = ssl.create_default_context()
    return _CTX


class _StrayResponse(Exception):
    """Raised inside the parser's callback: more bytes after the response was complete."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._body: list[bytes] = []
        self._status = 0
        self.started = False  # a byte of the current response has arrived
        self._complete = False
        self._keep_alive = False
        self.timer: asyncio.TimerHandle | None = None  # the exchange's bound (Http1Pool._check), re-armed once

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # bytes on an idle connection: nothing to pair them with, unusable
            self.abort()
            return
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Disconnected("the upstream switched protocols"))
        except httptools.HttpParserError as exc:  # a callback's exception (_StrayResponse) arrives wrapped in one
            self._fail(Disconnected(f"malformed HTTP response ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        # A body delimited by the end of the connection (no length, not chunked) is complete now, if it ended
        # cleanly (a reset cut it short).
        if exc is None and self._status and not self._complete and self._no_length():
            self._finish()
            return
        self._fail(Disconnected("the connection closed before the response was complete"))

    def eof_received(self) -> bool | None:
        self.closed = True  # the server is done with it: never reused, even before connection_lost runs
        return None  # close our side too

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request: stray bytes, the connection cannot be trusted
            raise _StrayResponse

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._header_name = name
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        else:  # a value continued over two reads
            key = self._header_name.decode("latin-1").lower()
            self._headers[key] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim response: the real one follows
            self._reset()
            return
        self._keep_alive = bool(self._parser.should_keep_alive())  # read now: the parser resets after this call
        self._finish()

    # -- the exchange
    def _no_length(self) -> bool:
        h = self._headers
        return "content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()

    def _reset(self) -> None:
        self._headers = {}
        self._body = []
        self._status = 0
        self._complete = False
        self._keep_alive = False

    def _finish(self) -> None:
        self._complete = True
        waiter = self._waiter
        headers, body_parts = self._headers, self._body
        self._headers, self._body = {}, []  # the response owns these now; an idle connection holds no body
        if waiter is not None and not waiter.done():
            body = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
            waiter.set_result(Response(self._status, headers, body))

    def _fail(self, error: HttpError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def start(self, payload: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._reset()
        self.started = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = self._loop.create_future()
        self.transport.write(payload)
        return self._waiter

    @property
    def reusable(self) -> bool:
        # Not with request bytes still unsent (the server answered before reading the whole body: a 413, a 401).
        t = self.transport
        return (
            not self.closed and self._complete and self._keep_alive
            and t is not None and not t.is_closing() and t.get_write_buffer_size() == 0
        )  # fmt: skip

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Pool:
    """Keep-alive connections per origin (scheme, host, port); no limit on their number (concurrency is bounded by
    the server in front, as with the aiohttp connector this replaces)."""

    def __init__(self, *, keepalive_s: float = 30.0, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the context for https origins; None: the default one (system CAs, host names checked)."""
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._keepalive_s = keepalive_s
        self._tls = tls
        self._closed = False

    async def request(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect_s: float,
        first_byte_s: float,
        total_s: float,
    ) -> Response:
        """One exchange. ``target`` is the request target exactly as it goes on the wire (path and query, already
        percent-encoded: SigV4 signed it so). ``first_byte_s`` bounds the wait for the response's first byte after
        the request was written, ``total_s`` the whole exchange, connecting included."""
        if " " in target:
            raise ValueError("the request target must be percent-encoded")
        # ``headers`` carry ``host`` (the caller's: SigV4 signs it); the length is ours. Checked and encoded before a
        # connection is taken: nothing is sent, no socket is left behind.
        lines = [f"{method} {target} HTTP/1.1\r\ncontent-length: {len(body)}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        lines.append("\r\n")
        head = "".join(lines)
        # Exactly one line break per line: a CR or LF inside the target or a header would end the request early.
        if head.count("\n") != len(headers) + 3 or head.count("\r") != len(headers) + 3:
            raise ValueError("a line break inside the request target or a header")
        try:
            payload = head.encode("latin-1") + body
        except UnicodeEncodeError as exc:
            raise ValueError(f"a header that is not latin-1 ({exc.reason})") from None
        loop = asyncio.get_running_loop()
        start = loop.time()
        origin = (scheme, host, port)
        conn = self._take(origin, start)
        if conn is None:
            conn = await self._connect(loop, scheme, host, port, min(connect_s, total_s))
        waiter = conn.start(payload)
        conn.timer = loop.call_at(
            min(loop.time() + first_byte_s, start + total_s), self._check, conn, waiter, start, total_s
        )
        try:
            response = await waiter
        except BaseException:
            conn.abort()  # a cancelled or failed exchange: its connection is not reusable
            raise
        finally:
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        if conn.reusable and not self._closed:
            now = conn.idle_since = loop.time()
            idle = self._idle.setdefault(origin, deque())
            idle.append(conn)
            # Taken newest first, so the oldest are the ones that go stale (or that the server closed): drop them.
            while idle and (idle[0].closed or now - idle[0].idle_since >= self._keepalive_s):
                idle.popleft().abort()
        else:
            conn.abort()
        return _decoded(response)

    def _check(self, conn: _Conn, waiter: asyncio.Future[Response], start: float, total_s: float) -> None:
        """The one timer of an exchange: the first-byte bound, then (re-armed on the connection, where the
        exchange's ``finally`` cancels it) the total one."""
        conn.timer = None
        if waiter.done():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not conn.started:
            what = "sent no response" if now < start + total_s else "did not answer in time"
        elif now >= start + total_s:
            what = "did not answer in time"
        else:  # answering: only the total bound is left
            conn.timer = loop.call_at(start + total_s, self._check, conn, waiter, start, total_s)
            return
        waiter.set_exception(TimedOut(what))
        conn.abort()

    def _take(self, origin: tuple[str, str, int], now: float) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            t = conn.transport
            if not conn.closed and t is not None and not t.is_closing() and now - conn.idle_since < self._keepalive_s:
                return conn
            conn.abort()
        return None

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, scheme: str, host: str, port: int, timeout_s: float
    ) -> _Conn:
        tls = (self._tls or _tls()) if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise TimedOut("could not connect in time") from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConnectFailed(reason) from None
        return conn

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()
        self._idle.clear()


def _decoded(response: Response) -> Response:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("identity", "") or not response.body:  # an empty body (a 204, a bare error) has nothing to decode
        return response
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise Disconnected(f"a body in an unsupported encoding ({encoding})")
    # 47 = 32 + 15: a gzip or zlib header, detected; -15: raw deflate, as some servers send "deflate".
    for wbits in (47, -15) if encoding == "deflate" else (47,):
        try:
            return Response(response.status, response.headers, zlib.decompress(response.body, wbits))
        except zlib.error:
            pass
    raise Disconnected(f"a {encoding} body that does not decompress")

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


# Bounds on what an upstream may send (aiohttp, which this replaces, bounds header lines and counts; a body here is
# held whole, so it is bounded too). A body this large is no LLM answer; embeddings of thousands of long vectors as
# JSON floats stay well under it.
MAX_BODY = 256 << 20  # bytes of body, as received and once decompressed
MAX_ERROR_BODY = 64 << 10  # an error status's body, once decompressed: only its message is read (transport.py)
MAX_HEADERS = 256
MAX_HEADER_BYTES = 256 << 10
# A request body larger than this may still sit unsent in a buffer the client cannot see (under TLS, the TCP
# transport's) when the server answers early, with an error, without reading it: the connection is then not reused.
_EARLY_REPLY_SAFE = 16 << 10


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
        self._header_bytes = 0
        self._header_count = 0
        self._body: list[bytes] = []
        self._size = 0
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
        # httptools hands over whole names and values, however the bytes were split across reads.
        if self._status:  # a chunked body's trailer: not a header of the response (it may not override one)
            return
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            self._fail(Disconnected(f"response headers over {MAX_HEADERS} or {MAX_HEADER_BYTES >> 10} KiB"))
            raise _StrayResponse  # stops the parser; the waiter already has its error
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._fail(Disconnected(f"a response body over {MAX_BODY >> 20} MiB"))
            raise _StrayResponse  # stops the parser; the waiter already has its error
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
        self._header_bytes = self._header_count = 0
        self._body = []
        self._size = 0
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
        self._sweeper: asyncio.TimerHandle | None = None

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
        early = response.status >= 400 and len(body) > _EARLY_REPLY_SAFE  # see _EARLY_REPLY_SAFE
        if conn.reusable and not early and not self._closed:
            now = conn.idle_since = loop.time()
            idle = self._idle.setdefault(origin, deque())
            idle.append(conn)
            self._expire(idle, now)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._keepalive_s, self._sweep)
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

    def _expire(self, idle: deque[_Conn], now: float) -> None:
        """Taken newest first, so the oldest are the ones that go stale (or that the server closed): drop them."""
        while idle and (idle[0].closed or now - idle[0].idle_since >= self._keepalive_s):
            idle.popleft().abort()

    def _sweep(self) -> None:
        """Close what has been idle for the keep-alive time, for origins no longer called too (a fallback target
        used in one burst would otherwise hold its sockets until its next call): one timer per pool, not per
        connection, armed while anything is idle."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for origin, idle in list(self._idle.items()):
            self._expire(idle, now)
            if not idle:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive_s, self._sweep)

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
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
    error = response.status >= 400
    # 47 = 32 + 15: a gzip or zlib header, detected; -15: raw deflate, as some servers send "deflate".
    for wbits in (47, -15) if encoding == "deflate" else (47,):
        try:
            body = _inflate(response.body, wbits, MAX_ERROR_BODY if error else MAX_BODY, truncate=error)
        except zlib.error:
            continue
        return Response(response.status, response.headers, body)
    raise Disconnected(f"a {encoding} body that does not decompress")


_GZIP_MAGIC = b"\x1f\x8b"
_MAX_MEMBERS = 64


def _inflate(data: bytes, wbits: int, limit: int, *, truncate: bool) -> bytes:
    """Decompress every member of ``data`` (gzip allows several, concatenated), never producing more than
    ``limit`` bytes: past it an error body is cut (only its message matters) and any other is refused (a
    decompression bomb must not take the gateway's memory or hold its loop). Bytes after the last member that do
    not start another one are refused, as is a stream that ends early."""
    out: list[bytes] = []
    size = 0
    for _ in range(_MAX_MEMBERS):
        d = zlib.decompressobj(wbits)
        chunk = d.decompress(data, limit - size + 1)
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            if truncate:
                return b"".join(out)[:limit]
            raise Disconnected(f"a body over {limit >> 20} MiB once decompressed")
        if not d.eof:
            raise zlib.error("truncated stream")
        data = d.unused_data
        if not data:
            return b"".join(out)
        if wbits < 0 or not data.startswith(_GZIP_MAGIC):
            raise zlib.error("bytes after the compressed stream")
    raise zlib.error(f"more than {_MAX_MEMBERS} members")

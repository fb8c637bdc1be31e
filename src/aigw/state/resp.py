"""A lean, multiplexed Redis client for the request path (RESP2 over asyncio, replies parsed by hiredis).

Why not redis-py here: its asyncio client spends ~47 µs of CPU per command (pool checkout, retry wrapper, command
objects), measured on this project's bench machine; this client spends ~7 µs, and a production request makes
several Redis calls (cache, limits, settle, spend). Every command of the process shares a few connections: a
command is written at once and its future is resolved when its reply arrives, in order, so concurrent requests are
pipelined on the wire by construction.

It implements only what the stores call (``get``, ``set``, ``incrby``, ``expire``, ``evalsha``, ``script_load``,
``ping`` and a small non-transactional ``pipeline``), raises redis-py's own exception classes (so the stores'
guards and ``LuaScript``'s NOSCRIPT handling work unchanged), and handles plain ``redis://`` URLs only; the factory
keeps redis-py for anything else (TLS, unix sockets). Pub/sub stays on redis-py (keynotices.py).

Failure: a lost connection fails the commands in flight with ``ConnectionError``; the next command reconnects. A
command given up by its caller (cancellation) still has its reply read and dropped, so replies never shift onto the
wrong command. The command timeout is one watchdog per client, not a timer per command (a uvloop timer costs a
handle allocation and a heap insert): every quarter of the timeout it looks at each connection's oldest unanswered
command, and a connection that has left one unanswered for longer fails all of its commands with ``TimeoutError``
and is dropped. A command therefore fails between 1 and 1.25 times the timeout after it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespClient", "supports"]

_Arg = str | bytes | int | float


def supports(url: str) -> bool:
    return urlsplit(url).scheme == "redis"


def _pack(args: Sequence[_Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode() if not isinstance(a, str) else a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else reply


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.sent_at: deque[float] = deque()  # loop time each waiting command was written, in the same order
        self._out: list[bytes] = []  # commands written during this turn of the loop, sent together at its end
        self._turn = False  # commands were issued on this connection in this turn of the loop
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.lost = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.drained: asyncio.Future[None] | None = None  # set while the transport holds unsent bytes

    @property
    def pending(self) -> bool:
        """Commands were issued here in this turn of the loop (written early by ``submit`` or not yet written)."""
        return self._turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, so no isinstance check).
        self.transport = cast(asyncio.Transport, transport)
        # Kept: CPython 3.11's get_running_loop() costs a getpid() system call, and send() runs per command.
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # small writes must not wait for ACKs (Nagle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Told as soon as a write leaves bytes in the transport (the kernel's buffer is full), and again once every
        # byte is in the kernel's hands: ``submit`` waits for that (its command must precede what the caller writes).
        self.transport.set_write_buffer_limits(high=0)

    def pause_writing(self) -> None:
        if self.drained is None and self._loop is not None:
            self.drained = self._loop.create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            self._match()
        except hiredis.ProtocolError as exc:  # not RESP: nothing after it can be trusted to match its command
            self.fail(RedisConnectionError(f"malformed reply from Redis ({exc})"))
            if self.transport is not None:
                self.transport.abort()

    def _match(self) -> None:
        waiting = self.waiting
        while (reply := self._reader.gets()) is not False:
            if not waiting:  # nothing asked for it (never happens without pub/sub): not ours to match
                continue
            future = waiting.popleft()
            self.sent_at.popleft()
            if future.done():  # its caller gave up: the reply is read and dropped
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc!r}" if exc else "connection to Redis closed"))

    def fail(self, error: Exception) -> None:
        self.lost = True
        self.sent_at.clear()
        self.resume_writing()  # nothing more will be written: a waiting submit goes on (its reply fails below)
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, payload: bytes, count: int) -> list[asyncio.Future[Any]]:
        assert self.transport is not None and self._loop is not None
        loop = self._loop
        futures = [loop.create_future() for _ in range(count)]
        self.waiting.extend(futures)
        self.sent_at.extend([loop.time()] * count)
        # Coalesced: every command issued in this turn of the event loop goes out in one write (one syscall) when
        # the turn ends, instead of a syscall each; the order on the wire is still the order of ``waiting``.
        if not self._turn:
            self._turn = True
            loop.call_soon(self._end_turn)
        self._out.append(payload)
        return futures

    def _end_turn(self) -> None:
        self._turn = False
        self.flush()

    def flush(self) -> None:
        """Write what this turn has queued so far (at the turn's end, or at once for ``submit``)."""
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _up(conn: _Connection | None) -> bool:
    """Connected and not closing (a closing transport, before connection_lost has marked it lost, would drop
    commands queued on it)."""
    return conn is not None and not conn.lost and conn.transport is not None and not conn.transport.is_closing()


class RespClient:
    def __init__(
        self, url: str, *, connect_timeout_s: float = 0.25, command_timeout_s: float | None = None, connections: int = 2
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError("RespClient handles redis:// URLs only")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._db = int(parts.path.lstrip("/") or 0)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._connect_timeout_s = connect_timeout_s
        # Like a socket timeout: a reply that does not come in time fails the command and drops its connection (a
        # connection that stopped answering must not keep swallowing commands).
        self._command_timeout_s = command_timeout_s
        self._slots: list[_Connection | None] = [None] * connections
        self._watchdog: asyncio.TimerHandle | None = None
        self._locks = [asyncio.Lock() for _ in range(connections)]
        self._failed_at: list[float | None] = [None] * connections  # when the slot's last reconnect failed
        self._reconnects: list[asyncio.Task[_Connection] | None] = [None] * connections  # started by send_nowait
        self._next = itertools.cycle(range(connections))
        self._last = 0

    def _live(self) -> tuple[int, _Connection | None]:
        """The connection for a command issued now, if it is up. The commands of one turn of the loop share a
        connection: one write and one read for them all, where spreading them over the connections costs a system
        call and a wake-up per connection."""
        conn = self._slots[self._last]
        if conn is not None and conn.pending and _up(conn):
            return self._last, conn
        i = self._last = next(self._next)
        conn = self._slots[i]
        return i, conn if _up(conn) else None

    def send_nowait(self, *args: _Arg) -> asyncio.Future[Any] | None:
        """Queue a command for this turn's write without awaiting anything and return the future of its reply;
        None when no connection is up (then await ``execute``). Bounded by the watchdog.

        A slot found down is reconnected in the background while the command goes on another connection: callers
        that only ever use this method would otherwise never bring it back (``execute`` reconnects by waiting)."""
        i, conn = self._live()
        if conn is None:
            self._reconnect_soon(i)
            conn = next((c for c in self._slots if _up(c)), None)
            if conn is None:
                return None
        (future,) = conn.send(_pack(args), 1)
        self._watch()
        return future

    def _reconnect_soon(self, i: int) -> None:
        running = self._reconnects[i]
        if running is None or running.done():
            task = self._reconnects[i] = asyncio.get_running_loop().create_task(self._connect_slot(i))
            task.add_done_callback(_retrieve)  # a failure is the next caller's to see (the slot's failed_at)

    async def _connection(self) -> _Connection:
        i, conn = self._live()
        if conn is not None:
            return conn
        return await self._connect_slot(i)

    async def _connect_slot(self, i: int) -> _Connection:
        # One reconnect per slot, however many commands wait for it, and one wait: the commands queued behind a
        # failed attempt fail with it instead of each trying again in turn, the k-th after k connect timeouts. An
        # attempt given up by its caller (a client that went away) is no failure: the next in line tries.
        failed_at = self._failed_at[i]
        lock = self._locks[i]
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await lock.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port} in time") from None
        try:
            conn = self._slots[i]
            if conn is None or not _up(conn):
                if self._failed_at[i] != failed_at:
                    raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}")
                try:
                    conn = await self._connect()  # bounded by the connect timeout; fails as RedisConnectionError
                except Exception:
                    self._failed_at[i] = asyncio.get_running_loop().time()
                    raise
                self._slots[i] = conn
            return conn
        finally:
            lock.release()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, self._host, self._port)
                hello: list[list[_Arg]] = []
                if self._password is not None:
                    hello.append(["AUTH", *([self._username] if self._username else []), self._password])
                if self._db:
                    hello.append(["SELECT", self._db])
                if hello:
                    await asyncio.gather(*conn.send(b"".join(_pack(c) for c in hello), len(hello)))
        except BaseException as exc:
            if conn is not None and conn.transport is not None:  # a failed handshake must not leak its socket
                conn.transport.close()
            if isinstance(exc, OSError | TimeoutError):
                raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc!r}") from exc
            raise
        return conn

    @property
    def command_timeout_s(self) -> float | None:
        return self._command_timeout_s

    async def execute(self, *args: _Arg) -> Any:
        conn = await self._connection()
        (future,) = conn.send(_pack(args), 1)
        self._watch()
        return await future

    async def submit(self, *args: _Arg) -> asyncio.Future[Any]:
        """Write the command at once and return the future of its reply, without waiting for the reply: anything
        the caller writes anywhere afterwards (a response to its client) leaves after the command has been handed to
        the kernel. The commands queued earlier in this turn (this request's bookkeeping, other requests') leave in
        the same write; written now rather than at the turn's end, the caller goes on without waiting a turn of the
        loop (~15 µs at concurrency 1 on the bench machine; CPU per request at 64 unchanged). The future fails as
        ``execute``'s would, the watchdog's timeout included."""
        conn = await self._connection()
        (future,) = conn.send(_pack(args), 1)
        self._watch()
        conn.flush()
        if conn.drained is not None:  # the kernel's buffer is full: the command is not in its hands yet
            try:
                await asyncio.shield(conn.drained)
            except asyncio.CancelledError:
                future.add_done_callback(_retrieve)  # nobody will look at the reply: no "never retrieved" warning
                raise
        return future

    async def execute_many(self, commands: Sequence[Sequence[_Arg]]) -> list[Any]:
        """Several commands in one write, on one connection (not a transaction: others' commands may interleave)."""
        conn = await self._connection()
        futures = conn.send(b"".join(_pack(c) for c in commands), len(commands))
        self._watch()
        return list(await asyncio.gather(*futures))

    def _watch(self) -> None:
        if self._watchdog is None and self._command_timeout_s is not None:
            self._watchdog = asyncio.get_running_loop().call_later(self._command_timeout_s / 4, self._check)

    def _check(self) -> None:
        """The watchdog: drop each connection whose oldest unanswered command is older than the timeout; keep
        watching while any command is unanswered."""
        self._watchdog = None
        timeout = self._command_timeout_s
        assert timeout is not None
        now = asyncio.get_running_loop().time()
        waiting = False
        for conn in self._slots:
            if conn is None or not conn.sent_at:
                continue
            if now - conn.sent_at[0] > timeout:
                # Failed now, not when the loop gets to connection_lost: the next command must not use it.
                conn.fail(RedisTimeoutError(f"no reply from Redis within {timeout}s"))
                if conn.transport is not None:
                    conn.transport.abort()  # the next command reconnects
            else:
                waiting = True
        if waiting:
            self._watch()

    # -- the subset of redis-py's API the stores use ----------------------------------------------------------
    async def get(self, name: str) -> bytes | None:
        value: bytes | None = await self.execute("GET", name)
        return value

    async def set(self, name: str, value: _Arg, ex: int | None = None, nx: bool = False) -> bool | None:
        args: list[_Arg] = ["SET", name, value]
        if ex is not None:
            args += ["EX", ex]
        if nx:
            args.append("NX")
        reply = await self.execute(*args)
        return True if reply == b"OK" else None

    async def incrby(self, name: str, amount: int = 1) -> int:
        value: int = await self.execute("INCRBY", name, amount)
        return value

    async def expire(self, name: str, seconds: int) -> bool:
        return bool(await self.execute("EXPIRE", name, seconds))

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: _Arg) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str) -> str:
        sha: bytes = await self.execute("SCRIPT", "LOAD", script)
        return sha.decode()

    async def ping(self) -> bool:
        reply: bytes = await self.execute("PING")
        return reply == b"PONG"

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        if transaction:
            raise NotImplementedError("RespClient pipelines are not transactions")
        return _Pipeline(self)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for task in self._reconnects:
            if task is not None:
                task.cancel()
        for i, conn in enumerate(self._slots):
            if conn is not None:
                # Failed here, not when the transport reports the close: a close waits for unsent bytes, which a
                # Redis that stopped reading never takes.
                conn.fail(RedisConnectionError("Redis client closed"))
                if conn.transport is not None:
                    conn.transport.abort()
            self._slots[i] = None


class _Pipeline:
    """The non-transactional pipeline the breaker's admin snapshot uses: ``time``, ``hmget``, ``execute``."""

    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._commands: list[list[_Arg]] = []
        self._post: list[Any] = []

    def time(self) -> _Pipeline:
        self._commands.append(["TIME"])
        self._post.append(lambda r: (int(r[0]), int(r[1])))
        return self

    def hmget(self, name: str, keys: Sequence[str]) -> _Pipeline:
        self._commands.append(["HMGET", name, *keys])
        self._post.append(None)
        return self

    async def execute(self) -> list[Any]:
        replies = await self._client.execute_many(self._commands) if self._commands else []
        return [post(r) if post is not None else r for post, r in zip(self._post, replies, strict=True)]

"""RespClient (aigw.state.resp) against the real Redis: the commands the stores use, replies matched to their
commands under heavy concurrency and after callers give up, errors as redis-py's exception classes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aigw.state.redis_calls import LuaScript
from aigw.state.resp import RespClient, supports
from tests.support.resp import record_writes

pytestmark = pytest.mark.redis


@pytest.fixture
def url(redis_url: str) -> str:
    return redis_url


@pytest.fixture
async def client(url: str) -> AsyncIterator[RespClient]:
    c = RespClient(url, connect_timeout_s=2)
    yield c
    await c.aclose()


@pytest.fixture
async def plain(url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(url)
    yield r
    await r.aclose()


async def test_the_commands_the_stores_use(client: RespClient, plain: Redis) -> None:
    assert await client.ping() is True
    assert await client.get("missing") is None
    assert await client.set("k", b"\x00binary\r\n", ex=60) is True
    assert await plain.get("k") == b"\x00binary\r\n", "written to the URL's database (SELECT), bytes intact"
    assert 0 < await plain.ttl("k") <= 60
    assert await client.set("k", "other", nx=True) is None and await client.get("k") == b"\x00binary\r\n"
    assert await client.incrby("n", 5) == 5 and await client.incrby("n", -2) == 3
    assert await client.expire("n", 30) is True and await client.expire("nope", 30) is False
    seconds, micros = (await client.pipeline().time().hmget("h", ["a", "b"]).execute())[0]
    assert seconds > 1_700_000_000 and 0 <= micros < 1_000_000


async def test_scripts_load_on_noscript_and_errors_are_redis_py_exceptions(client: RespClient) -> None:
    script = LuaScript("return {KEYS[1], tonumber(ARGV[1]) + 1}", "0" * 40)
    with pytest.raises(NoScriptError):
        await client.evalsha(script.sha, 1, "key", 1)
    real = LuaScript.load("limits_settle.lua")
    await client.script_load(real.source)
    loaded = LuaScript("return {KEYS[1], tonumber(ARGV[1]) + 1}", await client.script_load(script.source))
    assert await loaded.eval(client, ["key"], [41]) == [b"key", 42]
    with pytest.raises(ResponseError):
        await client.execute("INCRBY", "not-a-number-key", "x")


async def test_replies_reach_their_own_commands_under_concurrency(client: RespClient) -> None:
    await asyncio.gather(*(client.set(f"key:{i}", f"value:{i}") for i in range(500)))
    got = await asyncio.gather(*(client.get(f"key:{i}") for i in range(500)))
    assert got == [f"value:{i}".encode() for i in range(500)]
    totals = await asyncio.gather(*(client.incrby("counter", 1) for _ in range(1000)))
    assert sorted(totals) == list(range(1, 1001))


async def test_one_turns_commands_share_one_write_and_submit_writes_at_once(client: RespClient) -> None:
    """Commands issued in one turn of the loop leave in one write on one connection (a system call and a wake-up
    per turn, not per command or per connection); ``submit`` writes its command, and those queued before it in the
    turn, before it returns, so what the caller writes next (a response) cannot overtake it, and the caller goes on
    without waiting for the turn's end."""
    assert [await client.ping() for _ in range(2)] == [True, True]  # both connections made, one turn each
    assert all(conn is not None for conn in client._slots)
    recorded = record_writes(client)

    async def store(key: str) -> Any:
        reply = await client.submit("SET", key, "v")
        assert recorded and recorded[-1][1].endswith(b"$3\r\nSET\r\n$1\r\na\r\n$1\r\nv\r\n"), "returned before written"
        return await reply

    results = await asyncio.gather(client.incrby("n", 2), client.get("a"), store("a"), client.get("a"))
    assert list(results) == [2, None, b"OK", b"v"], "one connection: commands run in the order they were issued"
    assert len(recorded) == 2, "the turn's commands up to the SET in one write, the one after it at the turn's end"
    (on_first, first), (on_second, second) = recorded
    assert on_first == on_second, "the turn keeps its connection after the early write"
    assert first.count(b"*") == 3 and first.startswith(b"*3\r\n$6\r\nINCRBY") and second.count(b"*") == 1


async def test_a_command_given_up_does_not_shift_the_replies(url: str) -> None:
    c = RespClient(url, connect_timeout_s=2, connections=1)
    try:
        await c.set("after", "right")
        slow = asyncio.ensure_future(c.execute("BLPOP", "empty-list", "0.3"))  # blocks the connection 0.3 s
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await c.get("after") == b"right", "BLPOP's nil reply went to the cancelled command, not to this one"
    finally:
        await c.aclose()


async def test_a_timeout_drops_the_connection_and_the_next_command_reconnects(url: str) -> None:
    c = RespClient(url, connect_timeout_s=2, command_timeout_s=0.1, connections=1)
    try:
        with pytest.raises(RedisTimeoutError):
            await c.execute("BLPOP", "empty-list", "1")
        assert await c.set("x", "1") is True and await c.get("x") == b"1"
    finally:
        await c.aclose()


async def test_unreachable_redis_is_a_connection_error() -> None:
    c = RespClient("redis://127.0.0.1:1/0", connect_timeout_s=0.5)
    with pytest.raises(RedisConnectionError):
        await c.get("k")
    await c.aclose()


def test_only_plain_redis_urls() -> None:
    assert supports("redis://127.0.0.1:6379/0") and not supports("rediss://h:6380/0")
    assert not supports("unix:///run/redis.sock")
    with pytest.raises(ValueError):
        RespClient("rediss://h/0")


def test_under_uvloop(url: str) -> None:
    """The gateway runs on uvloop, whose transports are not asyncio.Transport subclasses."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[object]:
        c = RespClient(url, connect_timeout_s=2)
        try:
            await c.set("uv", "loop")
            return [await c.get("uv"), *await asyncio.gather(*(c.incrby("uvn", 1) for _ in range(100)))]
        finally:
            await c.aclose()

    got = uvloop.run(main())
    assert got[0] == b"loop" and sorted(got[1:]) == list(range(1, 101))


async def test_a_connection_that_stops_answering_is_replaced(url: str) -> None:
    """A half-open connection (peer gone silent, e.g. a network partition) must not keep swallowing commands: the
    client's own timeout, shorter than the store guard's (as the factory sets them), drops it."""
    from aigw.state.cache_redis import RedisCacheStore

    target = urlsplit(url)
    blackhole = {"on": False}

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection(target.hostname, target.port or 6379)
        dead = False

        async def up() -> None:
            nonlocal dead
            while data := await reader.read(65536):
                if blackhole["on"] or dead:
                    dead = True  # this connection stays silent for good
                    continue
                w2.write(data)
                await w2.drain()

        async def down() -> None:
            while data := await r2.read(65536):
                if not dead:
                    writer.write(data)
                    await writer.drain()

        await asyncio.gather(up(), down(), return_exceptions=True)
        w2.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}{target.path}", connect_timeout_s=0.2, command_timeout_s=0.2)
    store = RedisCacheStore(c, op_timeout_s=0.25, retry_interval_s=0.05)
    try:
        await c.set("aigw:cache:k", b"v")
        assert await store.get("k") == b"v"
        blackhole["on"] = True
        assert [await store.get("k") for _ in range(2)] == [None, None]  # misses, never errors
        blackhole["on"] = False  # Redis reachable again for new connections
        got = []
        for _ in range(12):
            await asyncio.sleep(0.06)  # past the guard's retry interval
            got.append(await store.get("k"))
        assert got[-6:] == [b"v"] * 6, got
    finally:
        await c.aclose()
        server.close()
        await server.wait_closed()


async def test_the_watchdog_times_out_unawaited_commands_and_stops_when_idle(url: str) -> None:
    """One watchdog per client bounds every command, a submitted one whose reply nobody awaits included; it is not
    left running when nothing waits for a reply."""
    c = RespClient(url, connect_timeout_s=2, command_timeout_s=0.1, connections=1)
    try:
        assert await c.ping() is True
        stuck = asyncio.ensure_future(c.execute("BLPOP", "empty-list", "2"))  # holds the connection's replies
        await asyncio.sleep(0)
        submitted = await c.submit("SET", "after-stuck", "1")
        with pytest.raises(RedisTimeoutError):
            await stuck
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(submitted, 1)
        assert await c.get("x") is None  # reconnected
        await asyncio.sleep(0.1)
        assert c._watchdog is None, "nothing in flight: no timer armed"
    finally:
        await c.aclose()


async def test_commands_waiting_on_a_failing_reconnect_fail_with_it() -> None:
    """A Redis that accepts connections but never answers the handshake: every command waiting for the slot fails
    within one connect timeout, not one after the other (the k-th after k timeouts)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # AUTH arrives and is never answered
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://:pw@127.0.0.1:{port}/0", connect_timeout_s=0.2, command_timeout_s=0.2, connections=2)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        results = await asyncio.gather(*(c.get("k") for _ in range(20)), return_exceptions=True)
        took = loop.time() - started
        assert all(isinstance(r, RedisConnectionError | TimeoutError) for r in results), results
        assert took < 0.35, f"20 commands took {took:.2f}s: the waiters reconnected one after the other"
    finally:
        await c.aclose()
        server.close()
        await server.wait_closed()


async def test_submit_waits_while_the_kernel_buffer_is_full() -> None:
    """``submit`` returns once its command is in the kernel's hands: while Redis is not reading and the socket's
    buffer is full, the rest of the command waits in the transport, and so does the caller."""
    reading = asyncio.Event()
    received = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"PING\r\n")
        writer.write(b"+PONG\r\n")
        await reader.read(1)  # the SET has started to arrive; stop reading until told
        await reading.wait()
        while received < len(big) - 1:
            received += len(await reader.read(1 << 20))
        writer.write(b"+OK\r\n")
        await writer.drain()

    big = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (32 << 20, b"x" * (32 << 20))
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2, command_timeout_s=30, connections=1)
    try:
        assert await c.ping() is True
        stored = asyncio.ensure_future(c.submit("SET", "k", b"x" * (32 << 20)))
        conn = c._slots[0]
        assert conn is not None
        async with asyncio.timeout(5):
            while conn.drained is None:  # 32 MiB do not fit in a loopback socket's buffers
                await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not stored.done(), "submit returned with its command still in the transport's buffer"
        reading.set()
        reply = await asyncio.wait_for(stored, 10)
        assert conn.transport is not None and conn.transport.get_write_buffer_size() == 0
        assert await asyncio.wait_for(reply, 10) == b"OK"
    finally:
        await c.aclose()
        server.close()
        await server.wait_closed()


async def test_send_nowait_brings_a_dropped_connection_back(client: RespClient) -> None:
    """A slot dropped (by the watchdog, or Redis closing it) is reconnected in the background when ``send_nowait``
    finds it down, while the command goes on the connection that is up: a caller that only ever sends this way
    must not be left on one connection for good."""
    assert [await client.ping() for _ in range(2)] == [True, True]
    dropped = client._slots[0]
    assert dropped is not None and dropped.transport is not None
    dropped.transport.abort()
    async with asyncio.timeout(5):
        while not dropped.lost:
            await asyncio.sleep(0)
    replies = [client.send_nowait("INCRBY", "sent-anyway", 1) for _ in range(4)]
    assert all(r is not None for r in replies), "a connection was up: nothing to fall back for"
    assert sorted([await r for r in replies if r is not None]) == [1, 2, 3, 4]
    reconnect = client._reconnects[0]
    assert reconnect is not None
    fresh = await asyncio.wait_for(reconnect, 5)
    assert client._slots[0] is fresh and fresh is not dropped and not fresh.lost


async def test_a_caller_cancelled_while_reconnecting_does_not_fail_those_behind_it(url: str) -> None:
    """A request that goes away (its client disconnected) while it holds a slot's reconnect is no failed connect:
    the commands queued behind it connect and run, instead of failing as if Redis were down."""
    c = RespClient(url, connect_timeout_s=2, command_timeout_s=2, connections=1)
    try:
        first = asyncio.ensure_future(c.execute("PING"))
        behind = [asyncio.ensure_future(c.execute("PING")) for _ in range(5)]
        for _ in range(2):  # the first is inside the connect, the others wait for the slot
            await asyncio.sleep(0)
        assert not first.done()
        first.cancel()
        assert await asyncio.gather(*behind) == [b"PONG"] * 5
    finally:
        await c.aclose()


async def test_a_connect_that_stalls_fails_as_a_redis_connection_error() -> None:
    """A server that accepts and never answers the handshake: the command fails with redis-py's ConnectionError
    (what the stores' guards catch), naming the server, within the connect timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.Event().wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://:secret@127.0.0.1:{port}/0", connect_timeout_s=0.2, connections=1)
    try:
        with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}"):
            await asyncio.wait_for(c.execute("PING"), 5)
    finally:
        await c.aclose()
        server.close()


async def _never_reads() -> tuple[asyncio.Server, asyncio.Event]:
    """A server that answers the first PING, then stops reading and never answers."""
    stalled = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"PING\r\n")
        writer.write(b"+PONG\r\n")
        stalled.set()
        await asyncio.Event().wait()

    return await asyncio.start_server(serve, "127.0.0.1", 0), stalled


async def test_aclose_fails_the_commands_in_flight() -> None:
    """Even with bytes still unsent to a Redis that stopped reading (a transport's close waits for those, and would
    leave the commands waiting and the socket open)."""
    server, stalled = await _never_reads()
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2, connections=1)  # no command timeout
    big = b"x" * (32 << 20)
    try:
        assert await c.ping() is True
        await stalled.wait()
        pending = [asyncio.ensure_future(c.execute("GET", "k")), asyncio.ensure_future(c.execute("SET", "k", big))]
        conn = c._slots[0]
        assert conn is not None and conn.transport is not None
        async with asyncio.timeout(5):
            while conn.transport.get_write_buffer_size() == 0:  # 32 MiB do not fit in the kernel's buffers
                await asyncio.sleep(0)
        await c.aclose()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        server.close()


async def test_a_malformed_reply_fails_the_connection_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that are not RESP: the commands waiting on that connection fail, nothing is logged as a fatal
    protocol error, and the next command reconnects."""
    answers = [b"!not resp\r\n", b"+PONG\r\n"]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"PING\r\n")
        writer.write(answers.pop(0))
        await reader.read(1)  # until the client drops the connection

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2, connections=1)
    try:
        with pytest.raises(RedisConnectionError, match="malformed reply"):
            await asyncio.wait_for(c.execute("PING"), 5)
        assert await asyncio.wait_for(c.ping(), 5) is True
        assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]
    finally:
        await c.aclose()
        server.close()

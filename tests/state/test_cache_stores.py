"""Response cache stores: get/set/TTL on memory and Redis, byte-bounded LRU, and Redis trouble never raising."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from aigw.caching import CachePlan, ResponseCache
from aigw.config.model import CacheConfig
from aigw.schema.usage import Usage
from aigw.state.cache_memory import CacheStore, MemoryCacheStore
from aigw.state.cache_redis import RedisCacheStore
from aigw.state.resp import RespClient
from tests.support.resp import record_writes

PREFIX = "aigw:test:cache:"
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str | None:
    # Resolved in a sync fixture: the Redis fixtures run their checks on a private loop, not inside the test's.
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
async def store(backend: str | None) -> AsyncIterator[CacheStore]:
    if backend is None:
        yield MemoryCacheStore(max_bytes=1 << 20)
        return
    client = Redis.from_url(backend)
    try:
        yield RedisCacheStore(client, prefix=PREFIX, op_timeout_s=5.0)
    finally:
        await client.aclose()


async def test_miss_then_hit(store: CacheStore) -> None:
    assert await store.get("k1") is None
    await store.set("k1", b'{"id":"chatcmpl-1"}', 60)
    assert await store.get("k1") == b'{"id":"chatcmpl-1"}'
    assert await store.get("k2") is None


async def test_set_replaces(store: CacheStore) -> None:
    await store.set("k", b"old", 60)
    await store.set("k", b"new value", 60)
    assert await store.get("k") == b"new value"


async def test_binary_values_round_trip(store: CacheStore) -> None:
    value = bytes(range(256)) * 4
    await store.set("bin", value, 60)
    assert await store.get("bin") == value


async def test_non_positive_ttl_is_not_stored(store: CacheStore) -> None:
    await store.set("zero", b"v", 0)
    assert await store.get("zero") is None


# ---- memory --------------------------------------------------------------------------------------------------


async def test_memory_ttl_expiry_with_injected_clock() -> None:
    clock = Clock()
    s = MemoryCacheStore(max_bytes=100, clock=clock)
    await s.set("k", b"abc", 10)
    clock.now += 9.9
    assert await s.get("k") == b"abc"
    clock.now += 0.1
    assert await s.get("k") is None
    assert s.size_bytes == 0 and len(s) == 0  # an expired entry found on read is freed


async def test_memory_evicts_least_recently_used_by_bytes() -> None:
    s = MemoryCacheStore(max_bytes=10)
    await s.set("a", b"aaaa", 60)
    await s.set("b", b"bbbb", 60)
    assert await s.get("a") == b"aaaa"  # a is now the most recently used
    await s.set("c", b"cccc", 60)  # 12 bytes > 10: evict the LRU entry, b
    assert await s.get("b") is None
    assert await s.get("a") == b"aaaa"
    assert await s.get("c") == b"cccc"
    assert s.size_bytes == 8 and s.evictions == 1


async def test_memory_evicts_as_many_as_needed() -> None:
    s = MemoryCacheStore(max_bytes=10)
    for k in "abcde":
        await s.set(k, b"xx", 60)
    await s.set("big", b"y" * 9, 60)
    assert [await s.get(k) for k in "abcde"] == [None] * 5
    assert await s.get("big") == b"y" * 9
    assert s.size_bytes == 9 and s.evictions == 5


async def test_memory_entry_exactly_max_bytes_fits() -> None:
    s = MemoryCacheStore(max_bytes=4)
    await s.set("k", b"1234", 60)
    assert await s.get("k") == b"1234"


async def test_memory_oversize_entry_is_not_stored_and_evicts_nothing() -> None:
    s = MemoryCacheStore(max_bytes=10)
    await s.set("small", b"123", 60)
    await s.set("huge", b"x" * 11, 60)
    assert await s.get("huge") is None
    assert await s.get("small") == b"123"
    assert s.size_bytes == 3 and s.evictions == 0


async def test_memory_replacing_an_entry_frees_its_bytes() -> None:
    s = MemoryCacheStore(max_bytes=10)
    await s.set("k", b"12345678", 60)
    await s.set("k", b"1234", 60)
    await s.set("j", b"123456", 60)
    assert s.size_bytes == 10 and s.evictions == 0
    await s.set("k", b"x" * 11, 60)  # an oversize rewrite drops the old value rather than keep a stale one
    assert await s.get("k") is None


# ---- redis ---------------------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_sets_ttl_and_prefix(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        s = RedisCacheStore(client, prefix=PREFIX, op_timeout_s=5.0)
        await s.set("k", b"v", 120)
        ttl = await client.ttl(PREFIX + "k")
        assert 110 <= ttl <= 120
        assert await client.get(PREFIX + "k") == b"v"
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_entry_expires(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        s = RedisCacheStore(client, prefix=PREFIX, op_timeout_s=5.0)
        await s.set("k", b"v", 1)
        assert await s.get("k") == b"v"
        await client.pexpire(PREFIX + "k", 1)  # shorten instead of sleeping through a second
        deadline = time.monotonic() + 2.0
        while await s.get("k") is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert await s.get("k") is None
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_two_replicas_share_entries(redis_url: str) -> None:
    a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        await RedisCacheStore(a, prefix=PREFIX, op_timeout_s=5.0).set("k", b"shared", 60)
        assert await RedisCacheStore(b, prefix=PREFIX, op_timeout_s=5.0).get("k") == b"shared"
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_down_is_a_miss_and_a_dropped_write() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        s = RedisCacheStore(client)
        assert await s.get("k") is None
        await s.set("k", b"v", 60)
        assert await s.get("k") is None
        assert s.redis_errors == 1  # then skipped while marked down, instead of paying a timeout each
        assert s.dropped_sets == 1 and s.skipped_gets == 2
        assert s.degraded
    finally:
        await client.aclose()


async def test_redis_slow_call_times_out_as_a_miss() -> None:
    # A local listener that accepts and never answers: a Redis that hangs (loopback only, no outside traffic).
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=5, socket_timeout=5)
    try:
        s = RedisCacheStore(client, op_timeout_s=0.05)
        assert await s.get("k") is None
        assert s.redis_errors == 1
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


# ---- the lean client's SET: written before the caller goes on, its reply not waited for (ADR 0010) --------------


@pytest.mark.redis
async def test_lean_client_set_is_on_the_wire_before_set_returns(redis_url: str) -> None:
    """What the gateway relies on to answer before Redis does: once ``set`` has returned, the SET is in the kernel's
    hands (nothing buffered in the client or the transport), so a response written next goes out after it; no wait
    for the SET's reply in between. Redis does not order commands across connections, so visibility from another
    connection is checked after a PING on each connection has come back (replies on one connection come in order)."""
    lean, other = RespClient(redis_url, connect_timeout_s=2), Redis.from_url(redis_url)
    try:
        s = RedisCacheStore(lean, prefix=PREFIX)
        await lean.ping()  # connected: set's only await is then the write
        for i in range(200):
            await s.set(f"w{i}", b"v%d" % i, 60)
            live = [conn for conn in lean._slots if conn is not None]
            assert live and all(not conn._out for conn in live)
            assert all(conn.transport is not None and conn.transport.get_write_buffer_size() == 0 for conn in live)
        for conn in lean._slots:
            if conn is not None:
                (pong,) = conn.send(b"*1\r\n$4\r\nPING\r\n", 1)
                assert await pong == b"PONG"
        assert await other.mget([f"{PREFIX}w{i}" for i in range(200)]) == [b"v%d" % i for i in range(200)]
        assert s.dropped_sets == 0 and s.redis_errors == 0
    finally:
        await lean.aclose()
        await other.aclose()


async def test_lean_client_set_whose_reply_fails_is_counted_and_backs_off() -> None:
    """A SET is sent and then its connection is lost: the reply, which nobody awaits, still counts as a dropped
    write and puts the store in its back-off, as an awaited failure would."""
    got_set = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1 << 16)
        if b"PING" in data:
            writer.write(b"+PONG\r\n")
            await writer.drain()
            data = await reader.read(1 << 16)
        if b"SET" in data:
            got_set.set()
        writer.close()  # no reply: the connection is gone

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lean = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2)
    try:
        s = RedisCacheStore(lean, prefix=PREFIX, retry_interval_s=60)
        await lean.ping()
        await s.set("k", b"v", 60)
        assert s.dropped_sets == 0, "set returned before any reply"
        await asyncio.wait_for(got_set.wait(), 5)
        deadline = asyncio.get_running_loop().time() + 5
        while s.dropped_sets == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert s.dropped_sets == 1 and s.redis_errors == 1
        assert s.degraded, "later calls skip Redis for the back-off"
        assert await s.get("k") is None and s.skipped_gets == 1
    finally:
        await lean.aclose()
        server.close()
        await server.wait_closed()


# ---- the lean client's GET without a task (get_soon): what the gateway overlaps with admission ------------------


@pytest.mark.redis
async def test_lean_client_get_soon_leaves_in_the_turns_write(redis_url: str) -> None:
    lean = RespClient(redis_url, connect_timeout_s=2, command_timeout_s=2)
    other = Redis.from_url(redis_url)
    try:
        s = RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=None)
        await other.set(f"{PREFIX}k", b"stored")
        assert [await lean.ping() for _ in range(2)] == [True, True]  # both connections up
        writes = record_writes(lean)
        hit, miss = s.get_soon("k"), s.get_soon("absent")
        assert hit is not None and miss is not None and not writes, "queued, not written on their own"
        then = lean.send_nowait("INCRBY", "issued-later-in-the-turn", 1)  # as the limiter's script is sent
        assert then is not None
        assert await hit.value() == b"stored" and await miss.value() is None and await then == 1
        assert len(writes) == 1 and writes[0][1].count(b"*") == 3, "the GETs left with the turn's other command"
        assert s.skipped_gets == 0 and s.redis_errors == 0
    finally:
        await lean.aclose()
        await other.aclose()


async def test_get_soon_only_where_the_client_bounds_its_commands() -> None:
    """Not with redis-py, not with a guard timer of the store's own, not before a connection is up: ``get`` then.
    (Not while Redis is being skipped either: test_get_soon_whose_connection_fails_is_a_counted_miss.)"""
    url = "redis://127.0.0.1:1/0"  # never connected to
    py = Redis.from_url(url)
    lean = RespClient(url, connect_timeout_s=2, command_timeout_s=2)
    try:
        assert RedisCacheStore(py, prefix=PREFIX, op_timeout_s=None).get_soon("k") is None
        assert RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=1.0).get_soon("k") is None
        assert RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=None).get_soon("k") is None, "no connection yet"
        assert MemoryCacheStore(max_bytes=1 << 10).get_soon("k") is None
    finally:
        await lean.aclose()
        await py.aclose()


async def _one_shot_server() -> tuple[asyncio.Server, asyncio.Event]:
    """A server that answers a PING, then reads one more batch of commands and closes without a reply."""
    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1 << 16)
        if b"PING" in data:
            writer.write(b"+PONG\r\n")
            await writer.drain()
            await reader.read(1 << 16)
        got.set()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), got


async def test_get_soon_whose_connection_fails_is_a_counted_miss() -> None:
    server, _ = await _one_shot_server()
    port = server.sockets[0].getsockname()[1]
    lean = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2, command_timeout_s=5, connections=1)
    try:
        s = RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=None, retry_interval_s=60)
        await lean.ping()
        pending = s.get_soon("k")
        assert pending is not None
        assert await pending.value() is None
        assert s.skipped_gets == 1 and s.redis_errors == 1 and s.degraded
        assert s.get_soon("k") is None, "skipped while Redis is down: get() answers without a round trip"
    finally:
        await lean.aclose()
        server.close()
        await server.wait_closed()


async def test_get_soon_given_up_after_its_reply_failed_is_still_counted() -> None:
    """A lookup cancelled (its request refused) after its connection failed: the failure is still counted and
    starts the back-off, and nothing is left unretrieved."""
    server, got = await _one_shot_server()
    port = server.sockets[0].getsockname()[1]
    lean = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2, command_timeout_s=5, connections=1)
    try:
        s = RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=None, retry_interval_s=60)
        await lean.ping()
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: unhandled.append(context))
        pending = s.get_soon("k")
        assert pending is not None
        await asyncio.wait_for(got.wait(), 5)
        conn = next(c for c in lean._slots if c is not None)
        async with asyncio.timeout(5):
            while not conn.lost:  # the close reaches the client a turn or two after the server's
                await asyncio.sleep(0)
        pending.cancel()
        assert s.skipped_gets == 1 and s.redis_errors == 1 and s.degraded
        del pending
        gc.collect()
        assert not unhandled, "a failed reply was left unretrieved"
    finally:
        await lean.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.redis
async def test_get_soon_given_up_before_its_reply_does_not_shift_replies(redis_url: str) -> None:
    lean = RespClient(redis_url, connect_timeout_s=2, command_timeout_s=2, connections=1)
    other = Redis.from_url(redis_url)
    try:
        s = RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=None)
        await other.set(f"{PREFIX}given-up", b"not yours")
        await lean.ping()
        pending = s.get_soon("given-up")
        assert pending is not None
        pending.cancel()
        assert await lean.get("absent-key") is None, "the cancelled GET's reply went to the next command"
        assert s.skipped_gets == 0 and s.redis_errors == 0
    finally:
        await lean.aclose()
        await other.aclose()


@pytest.mark.redis
async def test_response_cache_lookup_runs_without_a_task_on_the_lean_client(redis_url: str) -> None:
    """What the gateway's admission overlaps with: on the lean client the lookup is a GET in flight, no task; on a
    store that cannot send at once (memory) it is a task. Both answer the stored entry."""
    lean = RespClient(redis_url, connect_timeout_s=2, command_timeout_s=2)
    try:
        assert [await lean.ping() for _ in range(2)] == [True, True]
        for store in (RedisCacheStore(lean, prefix=PREFIX, op_timeout_s=None), MemoryCacheStore(1 << 20)):
            rc = ResponseCache(store, CacheConfig(enabled=True, ttl_s=60), {})
            plan = CachePlan(f"lookup-{type(store).__name__}", "read_write", 60)
            await rc.put(plan, provider="openai", upstream_model="gpt-4o-mini", usage=Usage(3, 4), completion=ANSWER)
            tasks = len(asyncio.all_tasks())
            lookup = rc.lookup(plan)
            started = len(asyncio.all_tasks()) - tasks
            assert started == (0 if isinstance(store, RedisCacheStore) else 1), type(store).__name__
            hit = await lookup.answer()
            assert hit is not None and hit.provider == "openai" and hit.usage == Usage(3, 4)
    finally:
        await lean.aclose()

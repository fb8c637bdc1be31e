"""The after-response bookkeeping sent without a task (``settle_soon``, ``add_soon``) on the lean client against the
real Redis: it takes effect as the awaited calls do, survives a server that lost its scripts, counts failures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from aigw.state.budgets import MemoryBudgetStore, RedisBudgetStore
from aigw.state.limits_memory import MemoryLimitStore
from aigw.state.limits_redis import RedisLimitStore
from aigw.state.resp import RespClient

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    # One connection: a later command's reply comes after the bookkeeping's, so awaiting it waits for both.
    c = RespClient(redis_url, connect_timeout_s=2, command_timeout_s=5, connections=1)
    assert await c.ping()
    yield c
    await c.aclose()


def limits(client: RespClient) -> RedisLimitStore:
    prefix = f"aigw:rl:soon{uuid.uuid4().hex[:8]}:"
    return RedisLimitStore(client, prefix=prefix, fallback=MemoryLimitStore(), op_timeout_s=None)


async def test_a_settle_sent_without_awaiting_refunds_the_estimate(client: RespClient) -> None:
    store = limits(client)
    first = await store.check("t", None, 1000, 600)
    assert first.allowed and first.reservation is not None
    assert store.settle_soon(first.reservation, 100) is True
    assert await client.ping()  # its reply follows the settle's
    # 100 used: 900 more fit; had the 600 estimate stayed charged, they would not.
    assert (await store.check("t", None, 1000, 800)).allowed
    assert (store.degraded_calls, store.dropped_settles, store.redis_errors) == (0, 0, 0)


async def test_a_settle_after_the_server_lost_its_scripts_is_sent_again(client: RespClient) -> None:
    store = limits(client)
    first = await store.check("t", None, 1000, 600)
    assert first.reservation is not None
    assert await client.execute("SCRIPT", "FLUSH") == b"OK"
    assert store.settle_soon(first.reservation, 100) is True
    assert await client.ping()  # the NOSCRIPT reply has come: the settle is being sent again, script loaded
    for retry in list(store._retries):
        await retry
    assert (await store.check("t", None, 1000, 800)).allowed
    assert (store.dropped_settles, store.redis_errors) == (0, 0)


async def test_without_a_connection_the_caller_awaits_instead(redis_url: str) -> None:
    fresh = RespClient(redis_url, connect_timeout_s=2, connections=1)  # nothing connected yet
    try:
        store = limits(fresh)
        budgets = RedisBudgetStore(fresh, fallback=MemoryBudgetStore(), prefix=f"aigw:b:{uuid.uuid4().hex[:8]}:")
        first = await MemoryLimitStore().check("t", None, 1000, 600)  # any Redis reservation shape will do
        assert first.reservation is not None
        assert store.settle_soon(first.reservation, 1) is False
        assert budgets.add_soon("t", "2026-11", Decimal(1)) is False
        assert await budgets._fallback.spent("t", "2026-11") == 0, "nothing done when the caller must await add()"
    finally:
        await fresh.aclose()


async def test_a_spend_sent_without_awaiting_counts_and_gets_its_expiry(client: RespClient) -> None:
    prefix = f"aigw:budget:soon{uuid.uuid4().hex[:8]}:"
    store = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix=prefix)
    assert store.add_soon("t", "2026-11", Decimal("0.25")) is True
    assert store.add_soon("t", "2026-11", Decimal("0.5")) is True
    assert await client.ping()
    for task in list(store._tasks):
        await task
    key = f"{prefix}{{t}}:2026-11"
    assert await client.get(key) == b"750000000"
    assert await client.execute("TTL", key) > 0, "the spend that created the counter gave it its expiry"
    # Remembered from the INCRBY replies: no read needed, and the fallback kept its own total too.
    assert await store.spent("t", "2026-11") == Decimal("0.75")
    assert await store._fallback.spent("t", "2026-11") == Decimal("0.75")
    assert store.redis_errors == 0


async def test_a_spend_redis_refuses_is_counted_and_kept_locally(client: RespClient) -> None:
    prefix = f"aigw:budget:soon{uuid.uuid4().hex[:8]}:"
    store = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix=prefix)
    assert await client.set(f"{prefix}{{t}}:2026-11", "not a number") is True
    assert store.add_soon("t", "2026-11", Decimal("0.25")) is True
    assert await client.ping()
    assert store.redis_errors == 1
    assert await store._fallback.spent("t", "2026-11") == Decimal("0.25")


async def test_a_settle_that_fails_is_dropped_and_the_next_one_is_awaited(redis_url: str) -> None:
    c = RespClient(redis_url, connect_timeout_s=2, command_timeout_s=0.2, connections=1)
    try:
        store = limits(c)
        first = await store.check("t", None, 1000, 600)
        assert first.reservation is not None
        assert await c.execute("CLIENT", "PAUSE", 400, "ALL") == b"OK"  # Redis stops answering for 0.4 s
        assert store.settle_soon(first.reservation, 100) is True
        with pytest.raises(RedisTimeoutError):  # the watchdog's: the connection is dropped
            await c.ping()
        assert (store.dropped_settles, store.redis_errors) == (1, 1)
        assert store.degraded and store.settle_soon(first.reservation, 100) is False, "backing off: await settle()"
    finally:
        await c.aclose()


async def test_the_memory_store_settles_at_once() -> None:
    store = MemoryLimitStore()
    first = await store.check("t", None, 1000, 600)
    assert first.reservation is not None
    assert store.settle_soon(first.reservation, 100) is True
    assert (await store.check("t", None, 1000, 800)).allowed

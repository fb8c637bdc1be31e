"""Monthly spend totals: exact Decimal sums, per tenant and month, seeding, and Redis trouble never raising."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from aigw.state.budgets import BudgetStore, MemoryBudgetStore, RedisBudgetStore, month_of, month_start

PRICE = Decimal("0.000001234")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str | None:
    # Resolved in a sync fixture: the Redis fixtures run their checks on a private loop, not inside the test's.
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
async def store(backend: str | None) -> AsyncIterator[BudgetStore]:
    if backend is None:
        yield MemoryBudgetStore()
        return
    client = Redis.from_url(backend)
    try:
        yield RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:budget:")
    finally:
        await client.aclose()


async def test_exact_sums_per_tenant_and_month(store: BudgetStore) -> None:
    for _ in range(1000):
        await store.add("t1", "2026-11", PRICE)
    await store.add("t2", "2026-11", Decimal("5"))
    await store.add("t1", "2026-12", Decimal("1"))
    assert await store.spent("t1", "2026-11") == PRICE * 1000
    assert await store.spent("t2", "2026-11") == Decimal(5)
    assert await store.spent("t1", "2026-12") == Decimal(1)
    assert await store.spent("nobody", "2026-11") == Decimal(0)


async def test_seed_sets_the_start_of_the_month(store: BudgetStore) -> None:
    await store.seed("2026-11", {"t1": Decimal("2.5")})
    await store.add("t1", "2026-11", Decimal("0.5"))
    assert await store.spent("t1", "2026-11") == Decimal(3)


@pytest.mark.redis
async def test_redis_seed_does_not_overwrite_a_running_total(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        a = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:budget:")
        await a.add("t", "2026-11", Decimal(4))
        b = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:budget:")  # another replica
        await b.seed("2026-11", {"t": Decimal(1)})  # its view of the ledger at start is older
        assert await b.spent("t", "2026-11") == Decimal(4)
    finally:
        await client.aclose()


async def test_redis_down_falls_back_without_raising() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        s = RedisBudgetStore(client, fallback=MemoryBudgetStore())
        await s.add("t", "2026-11", Decimal(2))
        assert await s.spent("t", "2026-11") == Decimal(2)
        assert s.redis_errors >= 2
    finally:
        await client.aclose()


def test_month_boundaries_are_utc() -> None:
    now = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    assert month_of(now) == "2026-11" and month_start(now) == datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.redis
async def test_redis_totals_are_reused_briefly_and_refreshed_by_own_spend(redis_url: str) -> None:
    clock = [100.0]
    client = Redis.from_url(redis_url)
    try:
        a = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:rc:", monotonic=lambda: clock[0])
        b = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:rc:")  # another replica
        assert await a.spent("t", "2026-11") == 0
        await b.add("t", "2026-11", Decimal(5))
        assert await a.spent("t", "2026-11") == 0, "within read_cache_s: the remembered total"
        clock[0] += 0.3
        assert await a.spent("t", "2026-11") == 5, "then Redis is read again"
        await b.add("t", "2026-11", Decimal(2))
        await a.add("t", "2026-11", Decimal(1))
        assert await a.spent("t", "2026-11") == 8, "a spend's INCRBY answer brings the total, everyone's included"
        await b.add("t", "2026-11", Decimal(4))
        assert await a.spent("t", "2026-11") == 8, "and is remembered as a read is"
        clock[0] += 0.3
        assert await a.spent("t", "2026-11") == 12
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_counter_created_by_spend_expires_and_a_seeded_one_keeps_its_expiry(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        s = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:ttl:")
        await s.add("new", "2026-11", Decimal(1))
        await s.add("new", "2026-11", Decimal(1))
        assert 0 < await client.ttl("aigw:test:ttl:{new}:2026-11") <= 40 * 24 * 3600
        await s.seed("2026-11", {"seeded": Decimal(3)})
        await s.add("seeded", "2026-11", Decimal(1))
        assert await client.ttl("aigw:test:ttl:{seeded}:2026-11") > 0
        assert await s.spent("seeded", "2026-11") == 4
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_read_that_raced_our_own_spend_is_not_remembered(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        s = RedisBudgetStore(client, fallback=MemoryBudgetStore(), prefix="aigw:test:race:")
        read = asyncio.ensure_future(s.spent("t", "2026-11"))  # the GET is in flight ...
        await asyncio.sleep(0)
        await s.add("t", "2026-11", Decimal(2))  # ... when our own spend goes in
        await read
        assert await s.spent("t", "2026-11") == 2, "the stale read must not hide our own spend"
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_failed_expire_on_a_new_counter_is_tried_again(redis_url: str) -> None:
    """The EXPIRE that gives a month's new counter its lifetime failed (here: Redis refuses it to this user, by
    ACL): the next spend tries again, so the counter does not live forever."""
    admin = Redis.from_url(redis_url)
    user = f"aigw-test-noexpire-{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(user, enabled=True, nopass=True, keys=["*"], categories=["+@all"], commands=["-expire"])
    parts = urlsplit(redis_url)
    limited = Redis.from_url(f"redis://{user}:x@{parts.hostname}:{parts.port or 6379}{parts.path}")
    key = "aigw:test:exp:{t}:2026-11"
    try:
        s = RedisBudgetStore(limited, fallback=MemoryBudgetStore(), prefix="aigw:test:exp:")
        await admin.delete(key)
        await s.add("t", "2026-11", Decimal(1))
        assert await admin.ttl(key) == -1, "created, and its EXPIRE refused"
        await admin.acl_setuser(user, enabled=True, nopass=True, commands=["+expire"])
        await s.add("t", "2026-11", Decimal(1))
        assert 0 < await admin.ttl(key) <= 40 * 24 * 3600
        assert await s.spent("t", "2026-11") == 2
    finally:
        await limited.aclose()
        await admin.acl_deluser(user)
        await admin.delete(key)
        await admin.aclose()

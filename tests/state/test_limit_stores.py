"""Both rate-limit stores against one behaviour suite, then what only the Redis store does: one limit shared by
replicas, the server's clock, and Redis being unreachable (fail-open decides locally, fail-closed refuses).

The suite drives both stores with one fake clock (the Redis store's test-only ``clock`` replaces Redis TIME in the
scripts), so windows roll without sleeping. One Redis test uses the real server TIME with a short window.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from aigw.ratelimit import Decision, LimitStore, Reservation
from aigw.state.limits_memory import MemoryLimitStore
from aigw.state.limits_redis import UNAVAILABLE, RedisLimitStore

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self.clock = FakeClock()
        self.prefix = f"aigw:rl:t{uuid.uuid4().hex[:8]}:"
        self.clients: list[Redis] = []
        self.redis_stores: list[RedisLimitStore] = []

    def client(self, url: str | None = None, timeout: float = 2.0) -> Redis:
        client: Redis = Redis.from_url(
            url or self.redis_url or "", socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.clients.append(client)
        return client

    def store(self, *, fake_clock: bool = True, window_s: float = 60.0) -> LimitStore:
        fallback = MemoryLimitStore(clock=self.clock, window_s=window_s)
        if self.redis_url is None:
            return fallback
        store = RedisLimitStore(
            self.client(), prefix=self.prefix, fallback=fallback, clock=self.clock if fake_clock else None,
            window_s=window_s, op_timeout_s=5.0,  # a loaded CI host must not send a behaviour test to the fallback
        )  # fmt: skip
        self.redis_stores.append(store)
        return store

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
async def h(backend: str | None) -> AsyncIterator[Harness]:
    harness = Harness(backend)
    yield harness
    await harness.close()
    # A Redis test that quietly ran on the fallback would pass against memory: make that a failure.
    assert [(s.degraded_calls, s.dropped_settles) for s in harness.redis_stores] == [(0, 0)] * len(harness.redis_stores)


# -- the behaviour suite, on both stores -------------------------------------------------------------------------


async def test_boundary_and_rolling_window(h: Harness) -> None:
    s = h.store()
    h.clock.now = T0 + 59.5  # a burst just before a clock minute...
    assert [(await s.check("a", 5, None, 0)).allowed for _ in range(6)] == [True] * 5 + [False]
    h.clock.now = T0 + 60.5  # ...and just after it: still refused
    v = await s.check("a", 5, None, 0)
    assert not v.allowed and v.reservation is None
    assert v.requests is not None and (v.requests.allowed, v.requests.remaining) == (False, 0)
    assert v.requests.reset_s == pytest.approx(59.0) and v.requests.retry_after_s == pytest.approx(59.0)
    h.clock.now = T0 + 119.4
    assert not (await s.check("a", 5, None, 0)).allowed
    h.clock.now = T0 + 119.5  # exactly 60 s after the burst
    ok = await s.check("a", 5, None, 0)
    assert ok.allowed and ok.requests == Decision(True, 5, 4, 60.0, None)


async def test_tenant_isolation_and_unlimited(h: Harness) -> None:
    s = h.store()
    for _ in range(3):
        assert (await s.check("a", 3, None, 0)).allowed
    assert not (await s.check("a", 3, None, 0)).allowed
    assert (await s.check("b", 3, None, 0)).allowed
    v = await s.check("a", None, None, 10**6)
    assert v.allowed and v.requests is None and v.tokens is None


async def test_tpm_reserve_settle_and_overshoot(h: Harness) -> None:
    s = h.store()
    big = await s.check("a", None, 1000, 5000)  # alone in the window: may overshoot
    assert big.allowed and big.tokens == Decision(True, 1000, 0, 60.0, None) and big.reservation is not None
    assert not (await s.check("a", None, 1000, 1)).allowed
    await s.settle(big.reservation, 100)  # refund 4900
    h.clock.now = T0 + 10
    v = await s.check("a", 10, 1000, 800)
    assert v.allowed and v.tokens is not None and v.tokens.remaining == 100 and v.reservation is not None
    await s.settle(v.reservation, 950)  # charge 150 more, still dated T0 + 10
    refused = await s.check("a", 10, 1000, 1)
    assert refused.tokens == Decision(False, 1000, 0, reset_s=60.0, retry_after_s=50.0)  # when the 100 leaves
    assert refused.requests == Decision(True, 10, 9, reset_s=60.0, retry_after_s=None)  # nothing charged
    h.clock.now = T0 + 60  # the 100 left; 950 is still there
    assert (await s.check("a", 10, 1000, 50)).allowed
    h.clock.now = T0 + 70
    assert (await s.check("a", 10, 1000, 950)).allowed


async def test_settle_after_the_window_charges_now(h: Harness) -> None:
    s = h.store()
    v = await s.check("a", None, 1000, 10)
    assert v.reservation is not None
    h.clock.now = T0 + 90
    await s.settle(v.reservation, 900)
    h.clock.now = T0 + 91
    assert not (await s.check("a", None, 1000, 200)).allowed
    h.clock.now = T0 + 150
    assert (await s.check("a", None, 1000, 200)).allowed


async def test_concurrent_checks_admit_exactly_the_limit(h: Harness) -> None:
    s = h.store()
    verdicts = await asyncio.gather(*(s.check("a", 20, None, 0) for _ in range(50)))
    assert sum(v.allowed for v in verdicts) == 20


# -- Redis only ---------------------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_limit_is_global_across_replicas(redis_url: str) -> None:
    h = Harness(redis_url)
    try:
        a, b = h.store(fake_clock=False), h.store(fake_clock=False)  # two clients, real server TIME
        checks = [(a if i % 2 else b).check("shared", 20, 10_000, 100) for i in range(50)]
        verdicts = await asyncio.gather(*checks)
        assert sum(v.allowed for v in verdicts) == 20
        assert sum(v.allowed for v in verdicts[0::2]) > 0 and sum(v.allowed for v in verdicts[1::2]) > 0
        assert sorted(v.requests.remaining for v in verdicts if v.allowed and v.requests) == list(range(20))
        assert [s.degraded_calls for s in h.redis_stores] == [0, 0]
    finally:
        await h.close()


@pytest.mark.redis
async def test_server_time_window_rolls(redis_url: str) -> None:
    h = Harness(redis_url)
    try:
        s = h.store(fake_clock=False, window_s=0.5)
        assert [(await s.check("a", 2, None, 0)).allowed for _ in range(3)] == [True, True, False]
        deadline = time.monotonic() + 5
        while not (await s.check("a", 2, None, 0)).allowed:  # admitted again once the 0.5 s window rolls
            assert time.monotonic() < deadline, "window never rolled"
            await asyncio.sleep(0.05)
    finally:
        await h.close()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_never_raises(fail_open: bool) -> None:
    clock = FakeClock()
    client: Redis = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    store = RedisLimitStore(
        client, fallback=MemoryLimitStore(clock=clock), fail_open=fail_open, op_timeout_s=0.3, clock=clock
    )
    try:
        verdicts = [await store.check("a", 2, 100, 10) for _ in range(3)]
        if fail_open:  # decided locally: the per-process limit still holds
            assert [v.allowed for v in verdicts] == [True, True, False]
            assert verdicts[0].reservation is not None and verdicts[0].reservation.local
            await store.settle(verdicts[0].reservation, 50)
            assert store.degraded_calls == 3 and store.refused_unavailable == 0
        else:
            assert [(v.allowed, v.reason) for v in verdicts] == [(False, UNAVAILABLE)] * 3
            assert verdicts[0].retry_after_s == 1.0
            assert store.refused_unavailable == 3 and store.degraded_calls == 0
        assert store.redis_errors == 1  # later calls skipped Redis instead of paying the timeout again
        await store.settle(Reservation("a", 7, 10), 20)  # a Redis reservation while Redis is down: dropped
        assert store.dropped_settles == 1
    finally:
        await client.aclose()


# -- timing (printed, not asserted) -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
async def test_print_timing(h: Harness) -> None:
    s = h.store(fake_clock=False)
    n = 2000 if h.redis_url else 20000
    start = time.perf_counter()
    for i in range(n):
        v = await s.check(f"t{i % 50}", 10**6, 10**9, 100)
        assert v.reservation is not None
        await s.settle(v.reservation, 90)
    per = (time.perf_counter() - start) / n * 1e6
    print(f"\n{'redis' if h.redis_url else 'memory'} limiter: check+settle {per:.1f} us")

"""RedisBreakerStore's batched successes: a success under a clean permit is sent with the replica's next release call
for the target (at the latest ``success_flush_s`` later) instead of costing a round trip of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from aigw.breaker import BreakerPolicy, CircuitState, Outcome
from aigw.state.breaker_memory import MemoryBreakerStore
from aigw.state.breaker_redis import RedisBreakerStore
from tests.state.test_breaker_stores import FakeClock

pytestmark = pytest.mark.redis

K = "oai/gpt-4o"
POLICY = BreakerPolicy(failure_threshold=3, cooldown_s=30.0, trial_lease_s=120.0)


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Replicas:
    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FakeClock()
        self.mono = Mono()
        self.clients: list[Redis] = []

    def store(self, policy: BreakerPolicy = POLICY) -> RedisBreakerStore:
        client: Redis = Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        self.clients.append(client)
        return RedisBreakerStore(
            client,
            policy,
            prefix="aigw:cb:batch:",
            fallback=MemoryBreakerStore(policy, clock=self.clock),
            clock=self.clock,
            monotonic=self.mono,
        )


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Replicas]:
    replicas = Replicas(redis_url)
    yield replicas
    for c in replicas.clients:
        await c.aclose()


async def succeed(store: RedisBreakerStore, n: int = 1) -> None:
    for _ in range(n):
        permit = await store.acquire(K)
        assert permit is not None
        await store.release(permit, Outcome.SUCCESS)


async def fail(store: RedisBreakerStore, n: int = 1) -> None:
    for _ in range(n):
        permit = await store.acquire(K)
        assert permit is not None
        await store.release(permit, Outcome.FAILURE, "boom")


async def window_requests(store: RedisBreakerStore) -> int:
    (health,) = await store.snapshot([K])
    return health.window_requests


async def test_successes_are_sent_in_batches_at_most_a_flush_interval_apart(r: Replicas) -> None:
    a = r.store()
    await succeed(a, 10)
    assert await window_requests(a) == 1  # the first is sent; nine wait for the next send
    r.mono.now += 1.01
    await succeed(a)
    assert await window_requests(a) == 11, "the batch rides on the next send, nothing is lost"
    assert a.degraded_calls == 0


async def test_a_failure_carries_the_batch_and_the_batch_breaks_the_failure_run(r: Replicas) -> None:
    a, b = r.store(), r.store()
    await succeed(a, 2)  # one sent, one batched on A
    await fail(b, 2)  # B: two consecutive failures (threshold 3)
    await fail(a)  # A's batched success came after B's failures: the run restarts at 1, the circuit stays closed
    (health,) = await a.snapshot([K])
    assert (health.state, health.consecutive_failures) == (CircuitState.CLOSED, 1)
    assert health.window_requests == 5 and health.window_failures == 3


async def test_a_permit_granted_after_failures_is_not_clean_and_resets_the_run_at_once(r: Replicas) -> None:
    a, b = r.store(), r.store()
    await succeed(a)  # A has sent recently: a clean success now would be batched
    await fail(b, 2)
    r.mono.now += 0.3  # past A's remembered "closed and clean" (closed_cache_s)
    permit = await a.acquire(K)
    assert permit is not None and not permit.clean
    await a.release(permit, Outcome.SUCCESS)
    (health,) = await b.snapshot([K])
    assert health.consecutive_failures == 0, "a success after failures is sent at once"
    await fail(b, 2)
    assert await b.snapshot([K]) and (await b.snapshot([K]))[0].state is CircuitState.CLOSED


async def test_failure_rate_counts_batched_successes(r: Replicas) -> None:
    policy = BreakerPolicy(
        failure_threshold=100, cooldown_s=30.0, trial_lease_s=120.0, failure_rate=0.5, window_s=60, min_requests=4
    )
    a = r.store(policy)
    await succeed(a, 5)  # 1 sent + 4 batched
    await fail(a, 3)  # 3 failures out of 8 requests: under 50 %, though only 1 success was ever sent alone
    (health,) = await a.snapshot([K])
    assert health.state is CircuitState.CLOSED and health.window_requests == 8
    await fail(a, 2)  # 5 of 10: opens
    assert (await a.snapshot([K]))[0].state is CircuitState.OPEN


async def test_a_clean_closed_state_is_remembered_briefly_and_forgotten_on_failure(r: Replicas) -> None:
    a, b = r.store(), r.store()
    await succeed(a)  # A asked Redis: closed and clean, remembered for closed_cache_s
    await fail(b, 3)  # B opens the circuit
    assert (await b.snapshot([K]))[0].state is CircuitState.OPEN
    permit = await a.acquire(K)  # within the window A still calls the target (documented staleness)
    assert permit is not None and permit.clean
    await a.release(permit, Outcome.FAILURE, "boom")  # a failure forgets the remembered state at once
    assert await a.acquire(K) is None, "A now asks Redis and sees the open circuit"
    assert await r.store().acquire(K) is None  # a replica without a remembered state sees it open at once


async def test_the_remembered_state_expires(r: Replicas) -> None:
    a, b = r.store(), r.store()
    await succeed(a)
    await fail(b, 3)
    r.mono.now += 0.3
    assert await a.acquire(K) is None

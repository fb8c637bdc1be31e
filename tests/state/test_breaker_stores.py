"""Both breaker stores against one behaviour suite, then what only the Redis store does: share state between
replicas, use the server's clock, survive Redis going away and come back when it returns.

The suite drives both stores with the same fake clock (the Redis store's test-only ``clock`` replaces Redis TIME in
the scripts), so cooldowns and leases are tested without sleeping. One Redis test uses the real server TIME with a
short cooldown, polled with a deadline. Redis outages are real: a port nothing listens on, and a TCP proxy in front
of the real Redis that is stopped, stalled and restarted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aigw.breaker import MAX_ERROR_CHARS, BreakerPolicy, CircuitState, Outcome, Permit
from aigw.state import BreakerStore
from aigw.state.breaker_memory import MemoryBreakerStore
from aigw.state.breaker_redis import RedisBreakerStore, _Script

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
OK, FAIL, NEUTRAL = Outcome.SUCCESS, Outcome.FAILURE, Outcome.NEUTRAL
K = "openai/gpt-4o"
POLICY = BreakerPolicy(failure_threshold=3, cooldown_s=30.0, trial_lease_s=120.0)
Moves = list[tuple[str, CircuitState, CircuitState]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """Builds stores on one backend that share a fake clock and a transition log; each Redis store gets its own
    client (a separate "replica")."""

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self.clock = FakeClock()
        self.moves: Moves = []
        self.prefix = f"aigw:cb:t{uuid.uuid4().hex[:8]}:"
        self.clients: list[Redis] = []
        self.redis_stores: list[RedisBreakerStore] = []

    def record(self, key: str, before: CircuitState, after: CircuitState) -> None:
        self.moves.append((key, before, after))

    def client(self, *, decode_responses: bool = False) -> Redis:
        assert self.redis_url is not None
        client: Redis = Redis.from_url(
            self.redis_url, socket_timeout=2, socket_connect_timeout=2, decode_responses=decode_responses
        )
        self.clients.append(client)
        return client

    def store(
        self,
        policy: BreakerPolicy = POLICY,
        client: Redis | None = None,
        *,
        op_timeout_s: float = 5.0,  # generous: a loaded CI host must not send a behaviour test to the fallback
        retry_interval_s: float = 1.0,
    ) -> BreakerStore:
        fallback = MemoryBreakerStore(policy, clock=self.clock, on_transition=self.record)
        if self.redis_url is None and client is None:
            return fallback
        store = RedisBreakerStore(
            client or self.client(),
            policy,
            prefix=self.prefix,
            fallback=fallback,
            on_transition=self.record,
            clock=self.clock,
            op_timeout_s=op_timeout_s,
            retry_interval_s=retry_interval_s,
        )
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
    assert [s.degraded_calls for s in harness.redis_stores] == [0] * len(harness.redis_stores)


async def call(store: BreakerStore, outcome: Outcome, error: str | None = None, key: str = K) -> Permit:
    permit = await store.acquire(key)
    assert permit is not None, "expected the target to be callable"
    await store.release(permit, outcome, error)
    return permit


async def state(store: BreakerStore, key: str = K) -> CircuitState:
    (health,) = await store.snapshot([key])
    return health.state


async def open_it(store: BreakerStore, key: str = K) -> None:
    for _ in range(POLICY.failure_threshold):
        await call(store, FAIL, "upstream 503", key)
    assert await state(store, key) is OPEN


async def trial(store: BreakerStore) -> Permit:
    permit = await store.acquire(K)
    assert permit is not None and permit.trial
    return permit


# -- the behaviour suite, on both stores -------------------------------------------------------------------------


async def test_opens_after_threshold_and_skips_while_open(h: Harness) -> None:
    s = h.store()
    assert await call(s, FAIL, "e1") == await call(s, FAIL, "e2")  # same epoch, not a trial
    assert await state(s) is CLOSED
    await call(s, FAIL, "e3")
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.consecutive_failures, hl.last_error, hl.opened_at) == (OPEN, 3, "e3", h.clock.now)
    assert (hl.window_requests, hl.window_failures) == (3, 3)
    assert await s.acquire(K) is None
    assert await s.acquire("anthropic/claude") is not None  # other targets are unaffected
    assert h.moves == [(K, CLOSED, OPEN)]


async def test_success_resets_and_neutral_is_no_verdict(h: Harness) -> None:
    s = h.store()
    for outcome in (FAIL, FAIL, OK, FAIL, FAIL, NEUTRAL, NEUTRAL):
        await call(s, outcome, "boom")
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.consecutive_failures, hl.window_requests, hl.window_failures) == (CLOSED, 2, 5, 4)
    await call(s, FAIL)
    assert await state(s) is OPEN


async def test_half_open_admits_exactly_one_of_20_concurrent(h: Harness) -> None:
    s = h.store()
    await open_it(s)
    h.clock.advance(29.9)
    assert await s.acquire(K) is None
    h.clock.advance(0.1)
    permits = [p for p in await asyncio.gather(*(s.acquire(K) for _ in range(20))) if p is not None]
    assert len(permits) == 1 and permits[0].trial
    assert await state(s) is HALF_OPEN
    assert h.moves[-1] == (K, OPEN, HALF_OPEN)


async def test_trial_success_closes_and_resets(h: Harness) -> None:
    s = h.store()
    await open_it(s)
    h.clock.advance(30)
    await s.release(await trial(s), OK)
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.consecutive_failures, hl.window_requests, hl.window_failures) == (CLOSED, 0, 0, 0)
    assert (hl.last_error, hl.opened_at) == ("upstream 503", h.clock.now - 30)
    assert [m[2] for m in h.moves] == [OPEN, HALF_OPEN, CLOSED]
    assert all([await s.acquire(K), await s.acquire(K)])


async def test_trial_failure_reopens_with_a_fresh_cooldown(h: Harness) -> None:
    s = h.store()
    await open_it(s)
    h.clock.advance(30)
    permit = await trial(s)
    h.clock.advance(5)
    await s.release(permit, FAIL, "still down")
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.opened_at, hl.last_error, hl.consecutive_failures) == (OPEN, h.clock.now, "still down", 4)
    assert h.moves[-1] == (K, HALF_OPEN, OPEN)
    h.clock.advance(29.9)
    assert await s.acquire(K) is None
    h.clock.advance(0.1)
    await trial(s)


async def test_neutral_trial_frees_the_slot(h: Harness) -> None:
    s = h.store()
    await open_it(s)
    h.clock.advance(30)
    await s.release(await trial(s), NEUTRAL)
    assert await state(s) is HALF_OPEN
    await trial(s)
    assert await s.acquire(K) is None
    assert len(h.moves) == 2


async def test_trial_lease_expiry_frees_the_slot(h: Harness) -> None:
    s = h.store()
    await open_it(s)
    h.clock.advance(30)
    lost = await trial(s)
    h.clock.advance(119.9)
    assert await s.acquire(K) is None
    h.clock.advance(0.1)
    replacement = await trial(s)
    await s.release(lost, OK)  # its holder came back too late: another trial owns the slot
    assert await state(s) is HALF_OPEN
    await s.release(replacement, OK)
    assert await state(s) is CLOSED


async def test_stragglers_while_open_neither_close_nor_extend(h: Harness) -> None:
    s = h.store()
    slow = [await s.acquire(K) for _ in range(3)]
    await open_it(s)
    opened = h.clock.now
    h.clock.advance(20)
    assert slow[0] is not None and slow[1] is not None and slow[2] is not None
    await s.release(slow[0], OK)
    await s.release(slow[1], FAIL, "slow failure")
    await s.release(slow[2], NEUTRAL)
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.opened_at, hl.consecutive_failures, hl.last_error) == (OPEN, opened, 4, "slow failure")
    assert (hl.window_requests, hl.window_failures) == (5, 4)
    h.clock.advance(10)
    await trial(s)  # the cooldown still ends 30 s after the original opening


async def test_stragglers_while_half_open_do_not_decide(h: Harness) -> None:
    s = h.store()
    slow = [await s.acquire(K) for _ in range(2)]
    await open_it(s)
    h.clock.advance(30)
    the_trial = await trial(s)
    assert slow[0] is not None and slow[1] is not None
    await s.release(slow[0], OK)
    await s.release(slow[1], FAIL)
    assert await state(s) is HALF_OPEN
    assert await s.acquire(K) is None
    await s.release(the_trial, OK)
    assert await state(s) is CLOSED


async def test_stragglers_from_before_recovery_are_ignored(h: Harness) -> None:
    s = h.store()
    slow = [await s.acquire(K) for _ in range(5)]
    await open_it(s)
    h.clock.advance(30)
    await s.release(await trial(s), OK)
    for p in slow:
        assert p is not None
        await s.release(p, FAIL, "old news")
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.consecutive_failures, hl.window_requests, hl.last_error) == (CLOSED, 0, 0, "upstream 503")


async def test_failure_rate_opens_once_min_requests_seen(h: Harness) -> None:
    s = h.store(BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_requests=10, window_s=60.0))
    for outcome in (OK, FAIL) * 4 + (FAIL, OK):  # 10 requests, 5 failures; never 3 in a row
        await call(s, outcome)
    assert await state(s) is CLOSED  # at 9 requests too few; at 10 the last verdict was a success
    await call(s, FAIL)
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.window_requests, hl.window_failures) == (OPEN, 11, 6)
    assert h.moves == [(K, CLOSED, OPEN)]


async def test_failure_rate_window_rolls(h: Harness) -> None:
    s = h.store(BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_requests=4, window_s=60.0))
    for _ in range(3):
        await call(s, FAIL)
    for advance in (66, 60):
        # 66 s: eleven 6 s buckets on, the old failures sit in their own (now stale) slot of the ring;
        # 60 s more: ten buckets on, the same slot as before, which must be recycled, not added to.
        h.clock.advance(advance)
        for outcome in (OK, OK, OK, FAIL):
            await call(s, outcome)
        (hl,) = await s.snapshot([K])
        assert (hl.state, hl.window_requests, hl.window_failures) == (CLOSED, 4, 1)


async def test_snapshot_keeps_order_and_reports_unknown_keys_closed(h: Harness) -> None:
    s = h.store()
    await call(s, FAIL, "x" * 1000, key="b")
    snap = await s.snapshot(["nope", "b"])
    assert [x.key for x in snap] == ["nope", "b"]
    assert (snap[0].state, snap[0].consecutive_failures, snap[0].last_error, snap[0].opened_at) == (
        CLOSED,
        0,
        None,
        None,
    )
    assert snap[1].last_error is not None and len(snap[1].last_error) == MAX_ERROR_CHARS
    assert await s.snapshot([]) == []


# -- Redis only: replicas ----------------------------------------------------------------------------------------


@pytest.fixture
async def rh(redis_url: str) -> AsyncIterator[Harness]:
    harness = Harness(redis_url)
    yield harness
    await harness.close()


@pytest.mark.redis
async def test_replicas_share_state(rh: Harness) -> None:
    a, b = rh.store(), rh.store()
    await open_it(a)
    assert await b.acquire(K) is None
    assert await state(b) is OPEN
    rh.clock.advance(30)
    permits = [p for p in await asyncio.gather(*(r.acquire(K) for r in (a, b) * 10)) if p is not None]
    assert len(permits) == 1  # 20 concurrent acquires over two clients: one trial in all
    await b.release(permits[0], OK)
    assert await state(a) is CLOSED
    assert [m[2] for m in rh.moves] == [OPEN, HALF_OPEN, CLOSED]
    assert sum(s.degraded_calls for s in rh.redis_stores) == 0


@pytest.mark.redis
async def test_server_time_drives_the_cooldown(rh: Harness) -> None:
    client = rh.client()
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=0.2)
    s = RedisBreakerStore(client, policy, prefix=rh.prefix, fallback=MemoryBreakerStore(policy))  # no test clock
    before = await client.time()
    await call(s, FAIL)
    after = await client.time()
    (hl,) = await s.snapshot([K])
    assert hl.opened_at is not None and before[0] + before[1] / 1e6 <= hl.opened_at <= after[0] + after[1] / 1e6
    started = time.monotonic()
    assert await s.acquire(K) is None
    deadline = started + 5
    while (permit := await s.acquire(K)) is None:
        assert time.monotonic() < deadline, "the circuit never went half-open"
        await asyncio.sleep(0.01)
    assert permit.trial and time.monotonic() - started >= 0.15
    assert s.degraded_calls == 0


@pytest.mark.redis
async def test_hash_expires_and_scripts_load_after_noscript(rh: Harness) -> None:
    s = rh.store()
    assert isinstance(s, RedisBreakerStore)
    # A variant of the script that this server has certainly never seen: EVALSHA answers NOSCRIPT.
    source = s._acquire_script.source + f"\n-- {uuid.uuid4()}\n"
    s._acquire_script = _Script(source, hashlib.sha1(source.encode()).hexdigest())
    await open_it(s)
    assert await rh.clients[0].script_exists(s._acquire_script.sha) == [True]
    ttl = await rh.clients[0].ttl(rh.prefix + K)
    assert 0 < ttl <= s.ttl_s
    assert s.degraded_calls == 0


@pytest.mark.redis
async def test_works_with_decoded_responses(rh: Harness) -> None:
    s = rh.store(client=rh.client(decode_responses=True))
    await open_it(s)
    rh.clock.advance(30)
    await s.release(await trial(s), FAIL, "ünïcode")
    (hl,) = await s.snapshot([K])
    assert (hl.state, hl.last_error) == (OPEN, "ünïcode")


# -- Redis only: outages -----------------------------------------------------------------------------------------


class RedisProxy:
    """A TCP proxy in front of the real Redis. ``stop`` makes it unreachable (new connections refused, open ones
    cut), ``start`` brings it back on the same port, and ``stall`` accepts connections but never answers."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = 0
        self.stall = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.stall:
                await reader.read()  # swallow requests until the client gives up
                return
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            self._writers.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        dst.close()  # one side gone: end the other direction too


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[RedisProxy]:
    p = RedisProxy(redis_url)
    await p.start()
    yield p
    if p._server is not None:
        await p.stop()


def no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


@pytest.mark.redis
async def test_redis_down_degrades_to_local_state_and_never_raises(
    rh: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1; the client keeps redis-py's default retry policy: op_timeout_s bounds each call.
    dead: Redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    rh.clients.append(dead)
    s = rh.store(client=dead, op_timeout_s=0.2, retry_interval_s=0)
    assert isinstance(s, RedisBreakerStore)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="aigw.state.breaker_redis"):
        permit = await s.acquire(K)
        assert permit is not None and permit.local
        await s.release(permit, OK)
        await open_it(s)  # the fallback runs the same state machine
        assert await s.acquire(K) is None
    assert time.monotonic() - started < 3
    assert s.degraded_calls == s.redis_errors == 6  # 5 acquires and a snapshot; local permits skip Redis
    assert len([r for r in caplog.records if "Redis unavailable" in r.getMessage()]) == 1  # throttled
    assert rh.moves == [(K, CLOSED, OPEN)]


@pytest.mark.redis
async def test_after_a_failure_redis_is_skipped_for_the_retry_interval(rh: Harness) -> None:
    dead: Redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=no_retries())
    rh.clients.append(dead)
    s = rh.store(client=dead, retry_interval_s=60)
    assert isinstance(s, RedisBreakerStore)
    for _ in range(5):
        await call(s, OK)
    assert s.degraded and s.redis_errors == 1 and s.degraded_calls == 5


@pytest.mark.redis
async def test_stalled_redis_is_cut_short(rh: Harness, proxy: RedisProxy) -> None:
    proxy.stall = True
    slow: Redis = Redis(host="127.0.0.1", port=proxy.port, db=15, socket_timeout=10)  # and default retries
    rh.clients.append(slow)
    s = rh.store(client=slow, op_timeout_s=0.1)
    assert isinstance(s, RedisBreakerStore)
    started = time.monotonic()
    permit = await s.acquire(K)
    assert permit is not None and permit.local
    assert time.monotonic() - started < 2
    assert s.redis_errors == 1


@pytest.mark.redis
async def test_recovers_when_redis_comes_back(rh: Harness, proxy: RedisProxy) -> None:
    via_proxy: Redis = Redis(host="127.0.0.1", port=proxy.port, db=15, socket_timeout=1, retry=no_retries())
    rh.clients.append(via_proxy)
    a = rh.store(client=via_proxy, retry_interval_s=0)
    observer = rh.store()  # a second replica with a direct connection
    assert isinstance(a, RedisBreakerStore) and isinstance(observer, RedisBreakerStore)
    await open_it(a)
    assert await state(observer) is OPEN and a.degraded_calls == 0

    await proxy.stop()
    held = await a.acquire("other")  # from the fallback, never raising
    assert held is not None and held.local
    await open_it(a, "other")  # locally
    assert await state(observer, "other") is CLOSED  # none of that reached Redis
    errors = a.redis_errors
    assert errors > 0

    await proxy.start()
    assert await a.acquire(K) is None  # Redis answers again: its open circuit is back in force
    assert await state(a, "other") is CLOSED  # ... and so is its view of the target opened locally
    assert a.redis_errors == errors
    await a.release(held, FAIL)  # a fallback permit still goes back to the fallback
    assert (await observer.snapshot(["other"]))[0].consecutive_failures == 0
    assert observer.degraded_calls == 0


@pytest.mark.redis
async def test_a_trial_lost_in_an_outage_is_reclaimed_by_its_lease(rh: Harness, proxy: RedisProxy) -> None:
    via_proxy: Redis = Redis(host="127.0.0.1", port=proxy.port, db=15, socket_timeout=1, retry=no_retries())
    rh.clients.append(via_proxy)
    a = rh.store(client=via_proxy, retry_interval_s=0)
    observer = rh.store()
    await open_it(a)
    rh.clock.advance(30)
    lost = await trial(a)
    assert not lost.local
    await proxy.stop()
    await a.release(lost, OK)  # Redis unreachable: the verdict is dropped, quietly
    await proxy.start()
    assert await observer.acquire(K) is None  # the slot is still held ...
    rh.clock.advance(120)
    assert (await trial(observer)).trial  # ... until the lease runs out


# -- cost ------------------------------------------------------------------------------------------------------


def _bench(label: str, n: int, seconds: float) -> None:
    print(f"\n{label}: {seconds / n * 1e6:.2f} us per acquire+release pair ({n} pairs)")


async def test_benchmark_memory_pair() -> None:
    s = MemoryBreakerStore(BreakerPolicy(failure_rate=0.5))
    n = 100_000
    started = time.perf_counter()
    for i in range(n):
        permit = await s.acquire(K)
        assert permit is not None
        await s.release(permit, FAIL if i % 10 == 0 else OK, "boom")
    _bench("memory store", n, time.perf_counter() - started)


@pytest.mark.redis
async def test_benchmark_redis_pair(rh: Harness) -> None:
    s = RedisBreakerStore(rh.client(), POLICY, prefix=rh.prefix, fallback=MemoryBreakerStore(POLICY))
    n = 1_000
    started = time.perf_counter()
    for i in range(n):
        permit = await s.acquire(K)
        assert permit is not None
        await s.release(permit, FAIL if i % 10 == 0 else OK, "boom")
    _bench("redis store", n, time.perf_counter() - started)
    assert s.degraded_calls == 0

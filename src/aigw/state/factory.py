"""Builds the shared-state backends from settings: in-process by default, Redis when ``redis_url`` is set."""

from __future__ import annotations

from collections import Counter

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aigw.breaker import BreakerPolicy, CircuitState
from aigw.config import Settings
from aigw.ratelimit import LimitStore
from aigw.state import BreakerStore
from aigw.state.breaker_memory import MemoryBreakerStore
from aigw.state.breaker_redis import RedisBreakerStore
from aigw.state.budgets import BudgetStore, MemoryBudgetStore, RedisBudgetStore
from aigw.state.cache_memory import CacheStore, MemoryCacheStore
from aigw.state.cache_redis import RedisCacheStore
from aigw.state.limits_memory import MemoryLimitStore
from aigw.state.limits_redis import RedisLimitStore
from aigw.state.redis_calls import RedisClient
from aigw.state.resp import RespClient, supports
from aigw.telemetry.metrics import Metrics

# Short socket timeouts: a slow or dead Redis must degrade the gateway to local state, not stall requests.
REDIS_SOCKET_TIMEOUT_S = 0.25
REDIS_MAX_CONNECTIONS = 256  # per process; a request makes a few short calls, so this covers thousands in flight


class TransitionCounter:
    """Circuit state changes per (target, new state): shown by /admin/providers (and to the metrics)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._metrics = metrics

    def __call__(self, key: str, old: CircuitState, new: CircuitState) -> None:
        self.counts[(key, new.value)] += 1
        if self._metrics is not None:
            self._metrics.breaker_transition(target=key, state=new.value)

    def for_key(self, key: str) -> dict[str, int]:
        return {state: n for (k, state), n in self.counts.items() if k == key}


def make_redis(url: str, timeout_s: float = REDIS_SOCKET_TIMEOUT_S) -> RedisClient:
    """The lean multiplexed client (resp.py) for plain ``redis://`` URLs; redis-py for anything else (TLS, unix)."""
    if supports(url):
        # The client's own timeouts bound every call (command: 0.8-1.0 x the setting, plus up to 0.8 x for a call
        # that must reconnect first); the stores then set no timer of their own (guard_timeout_s). Only the client
        # can drop a connection that stopped answering.
        return RespClient(url, connect_timeout_s=timeout_s * 0.8, command_timeout_s=timeout_s * 0.8)
    return _redis_py(url, timeout_s)


def guard_timeout_s(redis: RedisClient, timeout_s: float) -> float | None:
    """The stores' own bound on a Redis call: none with the lean client, whose command timeout (shorter, see
    make_redis) already bounds every command; the same setting otherwise."""
    return None if isinstance(redis, RespClient) and redis.command_timeout_s is not None else timeout_s


def _redis_py(url: str, timeout_s: float) -> Redis:
    # No client-side retries: redis-py's default retries with back-off would turn a Redis outage into seconds of
    # latency per request; every caller has its own fallback to local state instead.
    # A blocking pool: under load, a call waits (at most timeout_s) for a free connection instead of failing with
    # MaxConnectionsError, which would send it to the local fallback although Redis is fine.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    client: Redis = Redis(connection_pool=pool)
    return client


def make_breaker(settings: Settings, redis: RedisClient | None, on_transition: TransitionCounter) -> BreakerStore:
    cb = settings.circuit_breaker
    policy = BreakerPolicy(
        failure_threshold=cb.failure_threshold,
        cooldown_s=cb.cooldown_s,
        failure_rate=cb.failure_rate,
        window_s=cb.window_s,
        min_requests=cb.min_requests,
        trial_lease_s=settings.request_timeout_s + 5.0,  # a trial outlives no request deadline
    )
    local = MemoryBreakerStore(policy, on_transition=on_transition)
    if redis is None:
        return local
    return RedisBreakerStore(
        redis,
        policy,
        fallback=local,
        on_transition=on_transition,
        op_timeout_s=guard_timeout_s(redis, settings.redis_timeout_s),
    )


def make_limits(settings: Settings, redis: RedisClient | None) -> LimitStore:
    local = MemoryLimitStore()
    if redis is None:
        return local
    return RedisLimitStore(
        redis,
        fallback=local,
        fail_open=settings.rate_limits.fail_open,
        op_timeout_s=guard_timeout_s(redis, settings.redis_timeout_s),
    )


def make_budgets(redis: RedisClient | None) -> BudgetStore:
    local = MemoryBudgetStore()
    return local if redis is None else RedisBudgetStore(redis, fallback=local)


def make_cache_store(settings: Settings, redis: RedisClient | None) -> CacheStore | None:
    """None when the cache is off; Redis (shared by replicas) when configured, else the in-process LRU."""
    if not settings.cache.enabled:
        return None
    if redis is None:
        return MemoryCacheStore(settings.cache.max_bytes)
    return RedisCacheStore(redis, op_timeout_s=guard_timeout_s(redis, settings.redis_timeout_s))

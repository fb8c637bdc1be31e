"""The Redis breaker store: one hash per target, shared by every replica, changed only by atomic Lua scripts.

Each acquire or release is ONE ``EVALSHA`` (loaded on ``NOSCRIPT``) of ``lua/breaker_acquire.lua`` or
``lua/breaker_release.lua``, which run the rules of ``aigw.breaker`` with Redis ``TIME`` as the clock, so replicas
with skewed clocks agree on cooldowns and leases. The rolling window lives in the same hash as a ring of buckets;
every write refreshes the hash's TTL, so targets nobody uses any more expire.

Successes are batched: a success under a *clean* permit (granted while the circuit was closed with no consecutive
failures) changes nothing in Redis but the window's request count, so it is counted here and sent with this replica's
next release call for that target that comes ``success_flush_s`` or more after the last one (or with any failure).
That saves a round trip on nearly every request. The cost: window counts lag (by ``success_flush_s`` while traffic
flows; when traffic to the target stops, the last batch waits for its next call, and a batch meeting a permit from
before a recovery is dropped with it), and a batched success resets the consecutive-failure count only when it is
sent (it is then taken as newer than the failures counted so far).

A clean "closed" answer is also remembered for ``closed_cache_s`` (0.25 s by default): acquires meanwhile are
granted here without a round trip. A circuit opened by another replica is therefore seen up to that much later; a
failure on this replica forgets the remembered state at once, and open or half-open circuits are never remembered
(the half-open trial stays exclusive across replicas).

Redis trouble never reaches the caller. A failed or slow call (``op_timeout_s`` bounds it, whatever the client's own
retry policy) is answered by the ``fallback`` memory store, and for ``retry_interval_s`` afterwards calls go straight
to the fallback instead of paying a timeout each; then Redis is tried again, so recovery is automatic. Permits from
the fallback are tagged (``Permit.local``) and go back to it. A Redis permit whose release fails is dropped: its
verdict is lost, and if it was the trial, the lease frees the slot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aigw.breaker import (
    WINDOW_BUCKETS,
    BreakerPolicy,
    CircuitState,
    Outcome,
    Permit,
    TargetHealth,
    Transition,
    bucket_index,
    closed_health,
    truncate_error,
    window_totals,
)
from aigw.state.breaker_memory import MemoryBreakerStore
from aigw.state.redis_calls import REDIS_DOWN, GuardedStore, LuaScript, RedisClient, RedisGuard

__all__ = ["RedisBreakerStore"]

log = logging.getLogger(__name__)

_SNAPSHOT_FIELDS = ("st", "cf", "le", "oa", *(f"w{c}{i}" for i in range(WINDOW_BUCKETS) for c in "brf"))
_STATES = {s.value: s for s in CircuitState}


_Script = LuaScript  # the old name, kept for tests


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace")  # clients without decode_responses return bytes


class RedisBreakerStore(GuardedStore):
    def __init__(
        self,
        redis: RedisClient,
        policy: BreakerPolicy,
        *,
        prefix: str = "aigw:cb:",
        fallback: MemoryBreakerStore,
        on_transition: Transition | None = None,
        clock: Callable[[], float] | None = None,
        ttl_s: int | None = None,
        op_timeout_s: float | None = 0.25,  # None: the client bounds each command (factory.guard_timeout_s)
        retry_interval_s: float = 1.0,
        warn_interval_s: float = 30.0,
        success_flush_s: float = 1.0,
        closed_cache_s: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` is for tests only: it replaces Redis TIME in the scripts (leave it None in production, where
        replicas must share one clock). ``ttl_s`` defaults to an hour, or longer if the policy needs it."""
        self._redis = redis
        self.policy = policy
        self._prefix = prefix
        self._fallback = fallback
        self._on_transition = on_transition
        self._clock = clock
        self._guard = RedisGuard(self._warn, op_timeout_s, retry_interval_s, warn_interval_s)
        self.ttl_s = ttl_s or math.ceil(
            max(3600.0, 2 * (policy.cooldown_s + policy.trial_lease_s), 2 * policy.window_s)
        )
        self._acquire_script = LuaScript.load("breaker_acquire.lua")
        self._release_script = LuaScript.load("breaker_release.lua")
        rate = "" if policy.failure_rate is None else repr(policy.failure_rate)
        # Release's policy arguments never change: build them once.
        self._release_tail = (
            policy.failure_threshold,
            rate,
            policy.min_requests,
            repr(policy.bucket_s),
            WINDOW_BUCKETS,
            self.ttl_s,
        )
        self._acquire_tail = (repr(policy.cooldown_s), repr(policy.trial_lease_s), self.ttl_s)
        self.degraded_calls = 0  # calls answered by the fallback because Redis failed or was being skipped
        self._success_flush_s = success_flush_s
        self._monotonic = monotonic
        self._batched: dict[str, int] = {}  # successes not yet sent, per target
        self._sent_at: dict[str, float] = {}  # when each target's batch was last sent (monotonic)
        self._closed_cache_s = closed_cache_s
        self._clean_until: dict[str, tuple[float, int]] = {}  # target -> (remembered until, epoch) while clean

    async def acquire(self, key: str) -> Permit | None:
        remembered = self._clean_until.get(key)
        if remembered is not None and self._monotonic() < remembered[0] and not self.degraded:
            return Permit(key, False, remembered[1], clean=True)
        reply = await self._guard.call(lambda: self._eval(self._acquire_script, key, self._now(), *self._acquire_tail))
        if reply is not REDIS_DOWN:
            allowed, epoch, trial, moved, clean = reply
            if moved and self._on_transition is not None:
                self._on_transition(key, CircuitState.OPEN, CircuitState.HALF_OPEN)
            if allowed and clean and not trial and self._closed_cache_s > 0:
                self._clean_until[key] = (self._monotonic() + self._closed_cache_s, int(epoch))
            return Permit(key, bool(trial), int(epoch), clean=bool(clean)) if allowed else None
        self.degraded_calls += 1
        return await self._fallback.acquire(key)

    async def release(self, permit: Permit, outcome: Outcome, error: str | None = None) -> None:
        if permit.local:
            await self._fallback.release(permit, outcome, error)
            return
        if self.degraded:
            self.degraded_calls += 1  # a Redis permit, Redis unreachable: the verdict is dropped (see module doc)
            return
        key = permit.key
        if outcome is not Outcome.SUCCESS:
            self._clean_until.pop(key, None)  # no longer clean: ask Redis again
        if outcome is Outcome.NEUTRAL and not permit.trial:
            return  # no verdict and no slot to free: nothing to tell Redis
        if outcome is Outcome.SUCCESS and permit.clean and not permit.trial:
            now = self._monotonic()
            if now - self._sent_at.get(key, -math.inf) < self._success_flush_s:
                self._batched[key] = self._batched.get(key, 0) + 1
                return
            self._sent_at[key] = now
        batched = self._batched.pop(key, 0)
        args = (self._now(), outcome.value, permit.epoch, int(permit.trial), truncate_error(error) or "")
        tail = (*self._release_tail, batched)
        moved = await self._guard.call(lambda: self._eval(self._release_script, key, *args, *tail))
        if moved is REDIS_DOWN:
            self.degraded_calls += 1
            return
        if moved:
            self._clean_until.pop(key, None)
            if self._on_transition is not None:
                before, after = (_STATES[_text(s) or ""] for s in moved)
                self._on_transition(permit.key, before, after)

    async def snapshot(self, keys: Iterable[str]) -> list[TargetHealth]:
        keys = list(keys)
        replies = await self._guard.call(lambda: self._snapshot_replies(keys))
        if replies is not REDIS_DOWN:
            return self._snapshot(keys, replies)
        self.degraded_calls += 1
        return await self._fallback.snapshot(keys)

    async def _snapshot_replies(self, keys: Sequence[str]) -> list[Any]:
        # Not hot (admin only): plain reads in one round trip, window summed here with the server's clock.
        pipe = self._redis.pipeline(transaction=False)
        if self._clock is None:
            pipe.time()
        for key in keys:
            pipe.hmget(self._prefix + key, _SNAPSHOT_FIELDS)
        return list(await pipe.execute())

    def _snapshot(self, keys: Sequence[str], replies: list[Any]) -> list[TargetHealth]:
        if self._clock is None:
            seconds, micros = replies.pop(0)
            now = seconds + micros / 1_000_000
        else:
            now = self._clock()
        current = bucket_index(now, self.policy)
        return [self._health(key, [_text(v) for v in reply], current) for key, reply in zip(keys, replies, strict=True)]

    @staticmethod
    def _health(key: str, v: list[str | None], current: int) -> TargetHealth:
        state, cf, last_error, opened_at, *window = v
        if state is None and cf is None and all(x is None for x in window):
            return closed_health(key)  # no hash: never used, or expired
        buckets = [
            (int(index), int(r or 0), int(f or 0))
            for index, r, f in zip(window[0::3], window[1::3], window[2::3], strict=True)
            if index is not None
        ]
        requests, failures = window_totals(buckets, current)
        return TargetHealth(
            key,
            _STATES[state or "closed"],  # no st field: never left closed
            int(cf or 0),
            last_error,
            float(opened_at) if opened_at is not None else None,
            requests,
            failures,
        )

    def _now(self) -> str:
        # "" makes the script read Redis TIME; repr keeps a test clock's float exact.
        return "" if self._clock is None else repr(self._clock())

    async def _eval(self, script: LuaScript, key: str, *args: str | int) -> Any:
        return await script.eval(self._redis, (self._prefix + key,), args)

    def _warn(self, exc: BaseException) -> None:
        log.warning(
            "circuit breaker: Redis unavailable (%r); using this replica's local state, retrying every %.1f s",
            exc,
            self._guard.retry_interval_s,
        )

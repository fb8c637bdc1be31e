"""The in-process breaker store: ``aigw.breaker.CircuitBreaker`` behind the async ``BreakerStore`` interface.

The embedded default (one replica), and the Redis store's fallback while Redis is unreachable. Nothing here awaits,
so acquire/release run to completion without yielding: no lock is needed on one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aigw.breaker import BreakerPolicy, CircuitBreaker, Outcome, Permit, TargetHealth, Transition

__all__ = ["MemoryBreakerStore"]


class MemoryBreakerStore:
    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.time,
        on_transition: Transition | None = None,
    ) -> None:
        # Epoch seconds (not monotonic): opened_at is shown to operators. A wall-clock step only shortens or
        # lengthens one cooldown.
        self._clock = clock
        self._breaker = CircuitBreaker(policy, on_transition=on_transition)

    @property
    def policy(self) -> BreakerPolicy:
        return self._breaker.policy

    async def acquire(self, key: str) -> Permit | None:
        return self._breaker.acquire(key, self._clock())

    async def release(self, permit: Permit, outcome: Outcome, error: str | None = None) -> None:
        self._breaker.release(permit, outcome, self._clock(), error)

    async def snapshot(self, keys: Iterable[str]) -> list[TargetHealth]:
        now = self._clock()
        return [self._breaker.health(key, now) for key in keys]

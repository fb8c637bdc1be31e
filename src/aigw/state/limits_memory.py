"""The in-process rate-limit store: ``aigw.ratelimit.RateLimiter`` behind the async ``LimitStore`` interface.

The embedded default (one replica: limits are per process), and the Redis store's fallback while Redis is
unreachable. Nothing here awaits, so check/settle run to completion without yielding: no lock on one event loop.
Tenants idle for a whole window are forgotten every ``sweep_every`` checks, so memory follows the active tenants.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aigw.ratelimit import WINDOW_S, RateLimiter, Reservation, Verdict

__all__ = ["MemoryLimitStore"]


class MemoryLimitStore:
    def __init__(
        self, *, clock: Callable[[], float] = time.time, window_s: float = WINDOW_S, sweep_every: int = 4096
    ) -> None:
        self._clock = clock
        self.limiter = RateLimiter(window_s)
        self._sweep_every = sweep_every
        self._checks = 0

    async def check(self, tenant: str, rpm: int | None, tpm: int | None, tokens_estimate: int) -> Verdict:
        now = self._clock()
        self._checks += 1
        if self._checks % self._sweep_every == 0:
            self.limiter.sweep(now)
        return self.limiter.check(tenant, rpm, tpm, tokens_estimate, now)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        self.limiter.settle(reservation, actual_tokens, self._clock())

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> bool:
        self.limiter.settle(reservation, actual_tokens, self._clock())
        return True

"""Monthly spend running totals per tenant (calendar month, UTC), for budget checks without querying raw usage.

In-process by default; with Redis, one counter per tenant and month shared by every replica, kept as integer
nano-dollars (INCRBY is exact, unlike INCRBYFLOAT). Both are seeded at startup from the ledger for the current month
(Redis with SET NX, so replicas starting together agree). A Redis error falls back to this process's own totals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from aigw.state.redis_calls import REDIS_DOWN, RedisClient, RedisGuard
from aigw.state.resp import RespClient

log = logging.getLogger("aigw.budgets")
NANO = Decimal("1e9")
TTL_S = 40 * 24 * 3600  # a month's counter outlives its month, then expires


def month_of(now: datetime) -> str:
    return f"{now.year:04d}-{now.month:02d}"


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


class BudgetStore(Protocol):
    async def spent(self, tenant: str, month: str) -> Decimal: ...

    async def add(self, tenant: str, month: str, amount: Decimal) -> None: ...

    def add_soon(self, tenant: str, month: str, amount: Decimal) -> bool:
        """``add`` without awaiting, when the store can: True if done or on its way; False if nothing was done and
        ``add`` must be awaited instead."""
        ...

    async def seed(self, month: str, totals: Mapping[str, Decimal]) -> None: ...


class MemoryBudgetStore:
    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], Decimal] = {}

    async def spent(self, tenant: str, month: str) -> Decimal:
        return self._spent.get((tenant, month), Decimal(0))

    async def add(self, tenant: str, month: str, amount: Decimal) -> None:
        self.add_soon(tenant, month, amount)

    def add_soon(self, tenant: str, month: str, amount: Decimal) -> bool:
        if len(self._spent) > 100_000:  # months gone by: keep only the current one's totals
            self._spent = {k: v for k, v in self._spent.items() if k[1] == month}
        self._spent[(tenant, month)] = self._spent.get((tenant, month), Decimal(0)) + amount
        return True

    async def seed(self, month: str, totals: Mapping[str, Decimal]) -> None:
        for tenant, total in totals.items():
            self._spent[(tenant, month)] = total


class RedisBudgetStore:
    """A tenant's month total seen in Redis is reused for ``read_cache_s`` (0.25 s): a budget check per request
    without a round trip per request. The total comes from a GET or, for a tenant with traffic here, from each
    spend's INCRBY answer (everyone's spend included), so under load there are no reads at all. Other replicas'
    spend is seen at most that much later (this replica's own at once), so a budget can be overshot by at most that
    long of spending, on top of the one request in flight."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        fallback: MemoryBudgetStore,
        prefix: str = "aigw:budget:",
        read_cache_s: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._fallback = fallback
        self._prefix = prefix
        self._read_cache_s = read_cache_s
        self._monotonic = monotonic
        self._read: dict[tuple[str, str], tuple[float, Decimal]] = {}  # (tenant, month) -> (read until, spent)
        self._unexpired: set[str] = set()  # counters this process created whose EXPIRE failed
        self._tasks: set[asyncio.Task[None]] = set()  # EXPIREs called for by an unawaited INCRBY (kept referenced)
        # No time limit and no back-off: every call tries Redis, and a failure falls back for that call only.
        self._guard = RedisGuard(_warn, op_timeout_s=None, retry_interval_s=0.0)

    @property
    def redis_errors(self) -> int:
        return self._guard.redis_errors

    def _key(self, tenant: str, month: str) -> str:
        return f"{self._prefix}{{{tenant}}}:{month}"

    async def spent(self, tenant: str, month: str) -> Decimal:
        k = (tenant, month)
        cached = self._read.get(k)
        if cached is not None and self._monotonic() < cached[0]:
            return cached[1]
        raw = await self._guard.call(lambda: self._redis.get(self._key(tenant, month)))
        if raw is REDIS_DOWN:
            return await self._fallback.spent(tenant, month)
        return self._remember(k, Decimal(int(raw)) / NANO if raw is not None else Decimal(0))

    def _remember(self, k: tuple[str, str], total: Decimal) -> Decimal:
        """Keep a total seen in Redis for ``read_cache_s``. A month's total only grows, so of two fresh values the
        larger is the later one: a GET that raced an INCRBY (on another connection) cannot hide that spend, and
        INCRBY replies arriving out of order cannot step back."""
        now = self._monotonic()
        cached = self._read.get(k)
        if cached is not None and now < cached[0]:
            total = max(total, cached[1])
        elif len(self._read) > 100_000:
            self._read.clear()
        self._read[k] = (now + self._read_cache_s, total)
        return total

    async def add(self, tenant: str, month: str, amount: Decimal) -> None:
        """INCRBY answers with the total after this spend, everyone's included: it refreshes the remembered total,
        so a tenant with traffic here has its budget checked without any read."""
        self._fallback.add_soon(tenant, month, amount)  # kept locally too, for the fallback's sake
        key, nanos = self._key(tenant, month), int(amount * NANO)
        total = await self._guard.call(lambda: self._redis.incrby(key, nanos))
        if total is REDIS_DOWN:
            self._unanswered(tenant, month, amount)
            return
        if self._answered(tenant, month, key, nanos, int(total)):
            await self._expire(key)

    def add_soon(self, tenant: str, month: str, amount: Decimal) -> bool:
        """The INCRBY queued on the lean client's connection in this turn; its reply is handled by a callback
        (an EXPIRE it calls for is then awaited in a task of its own). Otherwise False: await add()."""
        client = self._redis
        if not isinstance(client, RespClient):
            return False
        key, nanos = self._key(tenant, month), int(amount * NANO)
        reply = client.send_nowait("INCRBY", key, nanos)
        if reply is None:
            return False
        self._fallback.add_soon(tenant, month, amount)
        reply.add_done_callback(lambda done: self._incremented(done, tenant, month, amount, key, nanos))
        return True

    def _incremented(
        self, reply: asyncio.Future[Any], tenant: str, month: str, amount: Decimal, key: str, nanos: int
    ) -> None:
        exc = asyncio.CancelledError() if reply.cancelled() else reply.exception()
        if exc is not None:
            self._guard.failed(exc)
            self._unanswered(tenant, month, amount)
        elif self._answered(tenant, month, key, nanos, int(reply.result())):
            task = asyncio.get_running_loop().create_task(self._expire(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _unanswered(self, tenant: str, month: str, amount: Decimal) -> None:
        cached = self._read.get((tenant, month))
        if cached is not None:  # our own spend shows at once, even without Redis's answer
            self._read[(tenant, month)] = (cached[0], cached[1] + amount)

    def _answered(self, tenant: str, month: str, key: str, nanos: int, total: int) -> bool:
        """Remember the total INCRBY answered; True when the counter still needs its expiry."""
        self._remember((tenant, month), Decimal(total) / NANO)
        return total == nanos or key in self._unexpired

    async def _expire(self, key: str) -> None:
        # The INCRBY created the counter (no seed for this month yet): give it its expiry, once; a failed EXPIRE is
        # tried again with the next spend, or the counter would never expire.
        done = await self._guard.call(lambda: self._redis.expire(key, TTL_S))
        if done is REDIS_DOWN:
            self._unexpired.add(key)
        else:
            self._unexpired.discard(key)

    async def seed(self, month: str, totals: Mapping[str, Decimal]) -> None:
        await self._fallback.seed(month, totals)

        async def set_all() -> None:
            for tenant, total in totals.items():
                await self._redis.set(self._key(tenant, month), int(total * NANO), nx=True, ex=TTL_S)

        await self._guard.call(set_all)


def _warn(exc: BaseException) -> None:
    log.warning("budget counters: Redis unavailable (%s); using this process's totals", type(exc).__name__)

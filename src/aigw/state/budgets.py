"""Monthly spend running totals per tenant (calendar month, UTC), for budget checks without querying raw usage.

In-process by default; with Redis, one counter per tenant and month shared by every replica, kept as integer
nano-dollars (INCRBY is exact, unlike INCRBYFLOAT). Both are seeded at startup from the ledger for the current month
(Redis with SET NX, so replicas starting together agree). A Redis error falls back to this process's own totals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

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

    async def seed(self, month: str, totals: Mapping[str, Decimal]) -> None: ...


class MemoryBudgetStore:
    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], Decimal] = {}

    async def spent(self, tenant: str, month: str) -> Decimal:
        return self._spent.get((tenant, month), Decimal(0))

    async def add(self, tenant: str, month: str, amount: Decimal) -> None:
        if len(self._spent) > 100_000:  # months gone by: keep only the current one's totals
            self._spent = {k: v for k, v in self._spent.items() if k[1] == month}
        self._spent[(tenant, month)] = self._spent.get((tenant, month), Decimal(0)) + amount

    async def seed(self, month: str, totals: Mapping[str, Decimal]) -> None:
        for tenant, total in totals.items():
            self._spent[(tenant, month)] = total


class RedisBudgetStore:
    def __init__(self, redis: Redis, *, fallback: MemoryBudgetStore, prefix: str = "aigw:budget:") -> None:
        self._redis = redis
        self._fallback = fallback
        self._prefix = prefix
        self.redis_errors = 0

    def _key(self, tenant: str, month: str) -> str:
        return f"{self._prefix}{{{tenant}}}:{month}"

    def _failed(self, exc: Exception) -> None:
        self.redis_errors += 1
        if self.redis_errors == 1 or self.redis_errors % 1000 == 0:
            log.warning("budget counters: Redis unavailable (%s); using this process's totals", type(exc).__name__)

    async def spent(self, tenant: str, month: str) -> Decimal:
        try:
            raw = await self._redis.get(self._key(tenant, month))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return await self._fallback.spent(tenant, month)
        return Decimal(int(raw)) / NANO if raw is not None else Decimal(0)

    async def add(self, tenant: str, month: str, amount: Decimal) -> None:
        await self._fallback.add(tenant, month, amount)  # kept locally too, for the fallback's sake
        try:
            key = self._key(tenant, month)
            pipe = self._redis.pipeline(transaction=True)
            pipe.incrby(key, int(amount * NANO))
            pipe.expire(key, TTL_S)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def seed(self, month: str, totals: Mapping[str, Decimal]) -> None:
        await self._fallback.seed(month, totals)
        try:
            for tenant, total in totals.items():
                await self._redis.set(self._key(tenant, month), int(total * NANO), nx=True, ex=TTL_S)
        except (RedisError, OSError) as exc:
            self._failed(exc)

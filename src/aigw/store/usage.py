"""Usage records: bulk writes from the metering task (with their daily rollups), reports read from the rollups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time
from decimal import Decimal
from operator import attrgetter
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aigw.ids import hex_id
from aigw.store.bulk import insert_rows, present
from aigw.store.rollups import GroupBy, aggregate, fetch_totals, money, tenant_name_query, totals_query, upsert
from aigw.store.tables import usage_daily, usage_records


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request as billed. Field names and order match the ``usage_records`` columns (minus ``id``)."""

    request_id: str
    created_at: datetime  # aware
    tenant_id: str
    key_id: str | None
    model: str  # what the client asked for (alias or provider/model)
    provider: str | None
    upstream_model: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal | None  # None = price unknown
    status: int
    latency_ms: float
    stream: bool
    cache_hit: bool
    error_type: str | None
    cache: str | None = None  # x-aigw-cache (hit | miss | bypass); None for requests the cache never applies to
    saved_cost_usd: Decimal | None = None  # a hit: what the answer cost when it was first served (None: unknown)
    record_id: str = field(default_factory=lambda: hex_id(16))  # unique per record: a rewrite is recognised


_COLUMNS = tuple(f.name for f in fields(UsageRecord))
_values = attrgetter(*_COLUMNS)  # record -> tuple in column order (dataclasses.astuple deep-copies: slow)


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal  # unknown prices count as 0
    cache_hits: int = 0
    saved_cost_usd: Decimal = Decimal(0)  # what the cache hits would have cost upstream


@dataclass(frozen=True, slots=True)
class UsageSummary:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    by_model: list[ModelUsage]
    cache_hits: int = 0
    saved_cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date  # UTC
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class UsageReport:
    summary: UsageSummary
    by_day: list[DayUsage] | None  # only when grouped by day


@dataclass(frozen=True, slots=True)
class TenantUsage:
    tenant_id: str
    name: str | None  # None: no such tenant row (usage is kept without a foreign key)
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


class EventOutbox(Protocol):
    """Usage events written with their records (``aigw.events.Outbox``): at-least-once delivery needs both in one
    transaction."""

    async def enqueue(self, conn: AsyncConnection, records: Sequence[UsageRecord]) -> None: ...

    def notify(self) -> None: ...


class UsageRepo:
    def __init__(self, engine: AsyncEngine, outbox: EventOutbox | None = None) -> None:
        self._engine = engine
        self._outbox = outbox

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        """Write a batch, its daily rollups and its usage events in one transaction: all of it or none of it."""
        if not records:
            return
        async with self._engine.begin() as conn:
            # A batch may come again whole or in part after its commit went through unacknowledged (a connection
            # lost after COMMIT, a shutdown that gave up waiting): what is already there is not written twice, nor
            # counted again in the rollups or the events.
            seen = await present(conn, usage_records, "record_id", [r.record_id for r in records])
            if seen:
                records = [r for r in records if r.record_id not in seen]
                if not records:
                    return
            await insert_rows(conn, usage_records, _COLUMNS, [_values(r) for r in records])
            # After the raw rows: they validate the batch (NOT NULL, aware datetimes) before it is aggregated.
            await upsert(conn, aggregate(records))
            if self._outbox is not None:
                await self._outbox.enqueue(conn, records)
        if self._outbox is not None:
            self._outbox.notify()  # committed: the publishers need not wait for their next poll

    async def tenant_usage(self, tenant_id: str, since: datetime | None = None) -> UsageSummary:
        """Totals for one tenant (from ``since`` on, if given), and the same per requested model.

        Read from the daily rollups, so ``since`` must fall on a UTC midnight (use ``report`` for day ranges)."""
        start = None
        if since is not None:
            start = since.astimezone(UTC).date()
            if since != datetime.combine(start, time(), UTC):
                raise ValueError(f"since={since.isoformat()} is not a UTC day boundary: usage is kept per UTC day")
        return (await self.report(tenant_id, start=start)).summary

    async def report(
        self, tenant_id: str, *, start: date | None = None, end: date | None = None, group_by: GroupBy = "model"
    ) -> UsageReport:
        """One tenant's usage over UTC days [start, end] (inclusive; None = open), from ``usage_daily`` only.
        Always totals and per-model; per-day too with ``group_by="day"``."""
        cols = usage_daily.c
        by_model_q = totals_query(cols.model, start, end).where(cols.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            models = await fetch_totals(conn, by_model_q)
            days = None
            if group_by == "day":
                days = await fetch_totals(conn, totals_query(cols.day, start, end).where(cols.tenant_id == tenant_id))
        by_model = [
            ModelUsage(
                t.key, t.requests, t.prompt_tokens, t.completion_tokens, t.cost_usd, t.cache_hits, t.saved_cost_usd
            )
            for t in models
        ]
        summary = UsageSummary(
            requests=sum(m.requests for m in by_model),
            prompt_tokens=sum(m.prompt_tokens for m in by_model),
            completion_tokens=sum(m.completion_tokens for m in by_model),
            cost_usd=sum((m.cost_usd for m in by_model), money(None)),
            by_model=by_model,
            cache_hits=sum(m.cache_hits for m in by_model),
            saved_cost_usd=sum((m.saved_cost_usd for m in by_model), money(None)),
        )
        if days is None:
            return UsageReport(summary, None)
        return UsageReport(
            summary, [DayUsage(t.key, t.requests, t.prompt_tokens, t.completion_tokens, t.cost_usd) for t in days]
        )

    async def tenants_report(
        self, *, start: date | None = None, end: date | None = None, tenant_id: str | None = None
    ) -> list[TenantUsage]:
        """Per-tenant totals over UTC days [start, end] (inclusive), for the ``aigw usage`` table; tenants without
        usage in the period are left out."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(tenant_name_query(start, end, tenant_id))).all()
        return [
            TenantUsage(
                tenant_id=row.key,
                name=row.name,
                requests=int(row.requests or 0),
                prompt_tokens=int(row.prompt_tokens or 0),
                completion_tokens=int(row.completion_tokens or 0),
                cost_usd=money(row.cost_usd),
            )
            for row in rows
        ]

    async def prune(self, older_than: datetime) -> int:
        """Delete raw records created before ``older_than`` (``usage.retention_days``); the daily rollups stay, so
        reports are unchanged. Returns the number of rows deleted. Served by the index on ``created_at``."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(usage_records).where(usage_records.c.created_at < older_than))
        return int(result.rowcount)

    async def count(self, tenant_id: str) -> int:
        query = select(func.count()).select_from(usage_records).where(usage_records.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

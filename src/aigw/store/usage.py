"""Usage records: bulk writes from the metering task, and per-tenant totals for the admin API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aigw.store.tables import usage_records

_COST_QUANTUM = Decimal(1).scaleb(-9)  # usage_records.cost_usd is NUMERIC(18, 9)


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


_COLUMNS = tuple(f.name for f in fields(UsageRecord))
_values = attrgetter(*_COLUMNS)  # record -> tuple in column order (dataclasses.astuple deep-copies: slow)


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal  # unknown prices count as 0


@dataclass(frozen=True, slots=True)
class UsageSummary:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    by_model: list[ModelUsage]


class UsageRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        """Write a batch in one transaction: all of it or none of it."""
        if not records:
            return
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await _copy(conn, records)
            else:
                await conn.execute(
                    insert(usage_records), [dict(zip(_COLUMNS, _values(r), strict=True)) for r in records]
                )

    async def tenant_usage(self, tenant_id: str, since: datetime | None = None) -> UsageSummary:
        """Totals for one tenant (from ``since`` on, if given), and the same per requested model."""
        cols = usage_records.c
        query = (
            select(
                cols.model,
                func.count().label("requests"),
                func.sum(cols.prompt_tokens).label("prompt_tokens"),
                func.sum(cols.completion_tokens).label("completion_tokens"),
                func.sum(cols.cost_usd).label("cost_usd"),  # SUM skips NULL: unknown prices add nothing
            )
            .where(cols.tenant_id == tenant_id)
            .group_by(cols.model)
            .order_by(cols.model)
        )
        if since is not None:
            query = query.where(cols.created_at >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        by_model = [
            ModelUsage(
                model=row.model,
                requests=int(row.requests),
                prompt_tokens=int(row.prompt_tokens or 0),
                completion_tokens=int(row.completion_tokens or 0),
                cost_usd=_money(row.cost_usd),
            )
            for row in rows
        ]
        return UsageSummary(
            requests=sum(m.requests for m in by_model),
            prompt_tokens=sum(m.prompt_tokens for m in by_model),
            completion_tokens=sum(m.completion_tokens for m in by_model),
            cost_usd=sum((m.cost_usd for m in by_model), _money(None)),
            by_model=by_model,
        )

    async def count(self, tenant_id: str) -> int:
        query = select(func.count()).select_from(usage_records).where(usage_records.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


def _money(value: Decimal | None) -> Decimal:
    return (value or Decimal(0)).quantize(_COST_QUANTUM)


async def _copy(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """PostgreSQL fast path: binary COPY through asyncpg (about twice Core's executemany rate).

    COPY is one statement, so the batch is atomic even though it bypasses SQLAlchemy's statement layer (and with it
    the column types' processing: hence the explicit checks here).
    """
    rows: list[tuple[Any, ...]] = []
    for r in records:
        if r.created_at.tzinfo is None or r.created_at.utcoffset() is None:
            raise ValueError(f"naive created_at in usage record {r.request_id!r}: pass an aware datetime")
        rows.append(_values(r))
    driver = (await conn.get_raw_connection()).driver_connection  # the asyncpg.Connection under SQLAlchemy
    if driver is None:
        raise RuntimeError("database connection is closed")
    await driver.copy_records_to_table(usage_records.name, records=rows, columns=_COLUMNS)

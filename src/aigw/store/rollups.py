"""Daily usage rollups (``usage_daily``): folded into each raw batch's transaction, read by every report.

A batch is aggregated in Python to one row per (tenant, UTC day, model, provider), then upserted with
``INSERT … ON CONFLICT (key) DO UPDATE SET n = n + excluded.n`` (PostgreSQL, and SQLite ≥ 3.24). Rows are written
in key order so concurrent batches lock them in the same order (no deadlocks on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from aigw.store.tables import tenants, usage_daily

if TYPE_CHECKING:
    from aigw.store.usage import UsageRecord

COST_QUANTUM = Decimal(1).scaleb(-9)  # usage_records.cost_usd and usage_daily.cost_usd are NUMERIC(18, 9)
GroupBy = Literal["model", "day"]
_KEY = ("tenant_id", "day", "model", "provider")
_COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_requests",
    "cache_hits",
    "saved_cost_usd",
)


def money(value: Decimal | None) -> Decimal:
    return (value or Decimal(0)).quantize(COST_QUANTUM)


def aggregate(records: Iterable[UsageRecord]) -> list[dict[str, Any]]:
    """One ``usage_daily`` delta per key, in key order. Costs are rounded per record exactly as the raw column
    stores them (half away from zero), so rollup sums equal raw sums to the last digit."""
    acc: dict[tuple[str, date, str, str], list[Any]] = {}
    for r in records:
        day = r.created_at.astimezone(UTC).date()
        key = (r.tenant_id, day, r.model, r.provider or "")
        row = acc.get(key)
        if row is None:
            row = acc[key] = [0, 0, 0, 0, 0, Decimal(0), 0, 0, Decimal(0)]
        row[0] += 1
        row[1] += r.prompt_tokens
        row[2] += r.completion_tokens
        row[3] += r.cached_prompt_tokens
        row[4] += r.cache_write_tokens
        if r.cost_usd is None:
            row[6] += 1
        else:
            row[5] += Decimal(r.cost_usd).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)
        if r.cache_hit:
            row[7] += 1
        if r.saved_cost_usd is not None:
            row[8] += Decimal(r.saved_cost_usd).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)
    return [dict(zip(_KEY, key, strict=True)) | dict(zip(_COUNTERS, acc[key], strict=True)) for key in sorted(acc)]


@cache
def _upsert_statement(dialect_name: str) -> Any:
    """Built once per dialect: constructing it makes thousands of objects in reference cycles (the ``excluded``
    alias and its columns), which, made per batch, fed the cyclic garbage collector's pauses on the request path."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    stmt = dialect.insert(usage_daily)
    cols = usage_daily.c
    return stmt.on_conflict_do_update(
        index_elements=[cols[k] for k in _KEY],
        set_={name: cols[name] + stmt.excluded[name] for name in _COUNTERS},
    )


async def upsert(conn: AsyncConnection, deltas: Sequence[dict[str, Any]]) -> None:
    """Add the deltas to ``usage_daily`` on the caller's transaction."""
    if not deltas:
        return
    await conn.execute(_upsert_statement(conn.dialect.name), list(deltas))


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over some slice of ``usage_daily``; ``key`` is the model, the day or the tenant id it is grouped by."""

    key: Any
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal  # unknown prices count as 0
    cache_hits: int = 0
    saved_cost_usd: Decimal = Decimal(0)


def totals_query(key: ColumnElement[Any], start: date | None, end: date | None) -> Select[Any]:
    """Totals grouped by ``key`` over [start, end] (both inclusive, either open)."""
    cols = usage_daily.c
    query = (
        select(
            key.label("key"),
            func.sum(cols.requests).label("requests"),
            func.sum(cols.prompt_tokens).label("prompt_tokens"),
            func.sum(cols.completion_tokens).label("completion_tokens"),
            func.sum(cols.cost_usd).label("cost_usd"),
            func.sum(cols.cache_hits).label("cache_hits"),
            func.sum(cols.saved_cost_usd).label("saved_cost_usd"),
        )
        .group_by(key)
        .order_by(key)
    )
    if start is not None:
        query = query.where(cols.day >= start)
    if end is not None:
        query = query.where(cols.day <= end)
    return query


async def fetch_totals(conn: AsyncConnection, query: Select[Any]) -> list[Totals]:
    return [
        Totals(
            key=row.key,
            requests=int(row.requests or 0),
            prompt_tokens=int(row.prompt_tokens or 0),
            completion_tokens=int(row.completion_tokens or 0),
            cost_usd=money(row.cost_usd),
            cache_hits=int(row.cache_hits or 0),
            saved_cost_usd=money(row.saved_cost_usd),
        )
        for row in (await conn.execute(query)).all()
    ]


def tenant_name_query(start: date | None, end: date | None, tenant_id: str | None) -> Select[Any]:
    """Per-tenant totals with the tenant's name (None for a tenant id no longer in ``tenants``)."""
    inner = totals_query(usage_daily.c.tenant_id, start, end).order_by(None)
    if tenant_id is not None:
        inner = inner.where(usage_daily.c.tenant_id == tenant_id)
    sub = inner.subquery()
    return (
        select(sub, tenants.c.name).select_from(sub.outerjoin(tenants, tenants.c.id == sub.c.key)).order_by(sub.c.key)
    )

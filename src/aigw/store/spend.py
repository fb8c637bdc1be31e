"""Spend per tenant since a moment: read once at startup to seed the budget running totals (never per request)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.tables import usage_records


async def spend_since(engine: AsyncEngine, since: datetime) -> dict[str, Decimal]:
    query = (
        select(usage_records.c.tenant_id, func.sum(usage_records.c.cost_usd))
        .where(usage_records.c.created_at >= since, usage_records.c.cost_usd.is_not(None))
        .group_by(usage_records.c.tenant_id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {tenant: Decimal(total or 0) for tenant, total in rows}

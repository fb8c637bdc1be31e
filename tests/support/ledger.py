"""Read the usage ledger of a running gateway (for tests that check what was metered)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.engine import make_url

from aigw.store.tables import usage_records
from tests.support.databases import run_private
from tests.support.gateway import RunningGateway


def ledger(gw: RunningGateway, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's rows in ``usage_records`` (after flushing the recorder)."""
    gw.flush_usage()

    async def rows() -> list[dict[str, Any]]:
        query = select(usage_records).where(usage_records.c.tenant_id == tenant_id)
        async with gw.services.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings()]

    result: list[dict[str, Any]] = gw.call(rows())
    return result


def wait_for_ledger(gw: RunningGateway, tenant_id: str, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll the ledger until it holds ``n`` rows: the contract gives usage 5 s to become visible."""
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger(gw, tenant_id)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows


def pg_request_counts(pg_url: str, tenant_id: str) -> Counter[str]:
    """Rows per request_id in the tenant's usage records, read straight from PostgreSQL (for gateways in other
    processes); empty if the server is unreachable."""
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def rows() -> Counter[str]:
        conn = await asyncpg.connect(dsn, timeout=2)
        try:
            sql = "SELECT request_id, count(*) AS n FROM usage_records WHERE tenant_id = $1 GROUP BY request_id"
            return Counter({r["request_id"]: r["n"] for r in await conn.fetch(sql, tenant_id)})
        finally:
            await conn.close()

    try:
        return run_private(rows())
    except (OSError, asyncpg.PostgresError):
        return Counter()

"""Read the usage ledger of a running gateway (for tests that check what was metered)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from aigw.store.tables import usage_records
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

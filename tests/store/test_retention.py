"""usage.retention_days: the background prune deletes old raw rows and keeps the daily rollups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aigw.metering import prune_forever
from aigw.store.db import make_engine
from aigw.store.usage import UsageRepo
from tests.store.test_usage_repo import record


async def test_prune_forever_removes_only_old_rows(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        repo = UsageRepo(engine)
        now = datetime.now(UTC)
        old = [record("t", i, created_at=now - timedelta(days=40, seconds=i)) for i in range(5)]
        new = [record("t", 100 + i, created_at=now - timedelta(days=1, seconds=i)) for i in range(3)]
        await repo.insert_many(old + new)
        before = await repo.report("t", group_by="model")
        task = asyncio.create_task(prune_forever(repo, retention_days=30, every_s=3600))
        try:
            async with asyncio.timeout(5):
                while await repo.count("t") != 3:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
        after = await repo.report("t", group_by="model")
        assert after.summary == before.summary  # rollups keep the history the raw rows no longer hold
    finally:
        await engine.dispose()

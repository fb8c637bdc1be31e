"""Migration 0004 (usage events): up, down to 0003 and up again, with no drift from the tables in code."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.db import make_engine
from aigw.store.migrate import alembic_config, current_revision, schema_diff, upgrade_to_head

EVENT_TABLES = {"usage_event_outbox", "usage_event_sinks"}


async def _tables(engine: AsyncEngine) -> set[str]:
    def names(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    async with engine.connect() as conn:
        return await conn.run_sync(names)


def _downgrade_to_0003(url: str) -> None:
    command.downgrade(alembic_config(url), "0003_cache")


async def test_upgrade_downgrade_upgrade(empty_sqlite_url: str) -> None:
    await _roundtrip(empty_sqlite_url)


@pytest.mark.postgres
async def test_upgrade_downgrade_upgrade_postgres(empty_pg_url: str) -> None:
    await _roundtrip(empty_pg_url)


async def _roundtrip(url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, url)
    engine = make_engine(url)
    try:
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert head is not None and head >= "0004_usage_events"
        assert await current_revision(engine) == head
        assert await _tables(engine) >= EVENT_TABLES
        assert await schema_diff(engine) == []
        await engine.dispose()  # SQLite: batch mode needs the file to itself
        await asyncio.to_thread(_downgrade_to_0003, url)
        assert await current_revision(engine) == "0003_cache"
        assert not EVENT_TABLES & await _tables(engine)
        await asyncio.to_thread(upgrade_to_head, url)
        assert await schema_diff(engine) == []
    finally:
        await engine.dispose()

"""The real migrations, on empty databases: they must build exactly tables.metadata and undo cleanly."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.db import make_engine
from aigw.store.migrate import (
    PG_MIGRATION_LOCK_KEY,
    context_options,
    current_revision,
    downgrade_to_base,
    head_revision,
    schema_diff,
    upgrade_to_head,
)
from aigw.store.tables import metadata
from tests.support.databases import run_private

APP_TABLES = {"tenants", "api_keys", "usage_records", "usage_daily", "usage_event_outbox", "usage_event_sinks"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("empty_sqlite_url" if request.param == "sqlite" else "empty_pg_url")
    assert isinstance(url, str)
    return url


async def _tables(engine: AsyncEngine) -> set[str]:
    def names(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}

    async with engine.connect() as conn:
        return await conn.run_sync(names)


async def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    # Called through a worker thread while this test's loop runs: how an async caller must do it.
    await asyncio.to_thread(upgrade_to_head, empty_url)
    engine = make_engine(empty_url)
    try:
        assert await current_revision(engine) == head_revision()
        assert await _tables(engine) == APP_TABLES
        assert await schema_diff(engine) == []

        await asyncio.to_thread(downgrade_to_base, empty_url)
        assert await current_revision(engine) is None
        assert await _tables(engine) == set()

        await asyncio.to_thread(upgrade_to_head, empty_url)
        await asyncio.to_thread(upgrade_to_head, empty_url)  # already at head: a no-op
        assert await current_revision(engine) == head_revision()
        assert await schema_diff(engine) == []
    finally:
        await engine.dispose()


def test_upgrade_from_plain_sync_code(empty_sqlite_url: str) -> None:
    """The CLI path: no event loop anywhere."""
    upgrade_to_head(empty_sqlite_url)
    engine = make_engine(empty_sqlite_url)

    async def check() -> None:
        try:
            assert await current_revision(engine) == head_revision()
        finally:
            await engine.dispose()

    run_private(check())  # unlike asyncio.run, leaves pytest-asyncio's loop setting alone


async def test_a_running_migration_makes_others_wait(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        async with engine.connect() as holder:
            # Hold the lock a migration takes first.
            if holder.dialect.name == "sqlite":
                await holder.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK_KEY})
            migrating = asyncio.ensure_future(asyncio.to_thread(upgrade_to_head, empty_url))
            await asyncio.sleep(0.5)
            assert not migrating.done()
            if holder.dialect.name == "postgresql":
                await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK_KEY})
            await holder.rollback()
        await asyncio.wait_for(migrating, 30)
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


def test_concurrent_upgrades_take_turns(empty_url: str) -> None:
    """Replicas starting together all run `aigw migrate`: a database lock makes them queue, not collide."""
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(upgrade_to_head, empty_url) for _ in range(4)]:
            done.result()
    engine = make_engine(empty_url)

    async def check() -> None:
        try:
            assert await current_revision(engine) == head_revision()
            assert await schema_diff(engine) == []
        finally:
            await engine.dispose()

    run_private(check())


async def test_refuses_to_block_a_running_loop(empty_sqlite_url: str) -> None:
    with pytest.raises(RuntimeError, match="to_thread"):
        upgrade_to_head(empty_sqlite_url)


async def test_current_revision_of_a_never_migrated_database(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert await current_revision(engine) is None
    finally:
        await engine.dispose()


async def test_schema_diff_detects_drift(empty_url: str) -> None:
    """Guards the no-diff assertion above against comparing nothing."""
    await asyncio.to_thread(upgrade_to_head, empty_url)
    engine = make_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_api_keys_updated_at"))
        diff = await schema_diff(engine)
    finally:
        await engine.dispose()
    assert [d[0] for d in diff] == ["add_index"]
    assert diff[0][1].name == "ix_api_keys_updated_at"


async def test_autogenerate_renders_plain_sqlalchemy_types(empty_sqlite_url: str) -> None:
    """A future autogenerated migration must not import aigw (migrations are frozen records)."""
    engine = make_engine(empty_sqlite_url)

    def render(conn: Connection) -> str:
        opts = context_options(conn.dialect.name)
        script = produce_migrations(MigrationContext.configure(conn, opts=opts), metadata)
        assert script.upgrade_ops is not None
        return render_python_code(script.upgrade_ops, render_item=opts["render_item"])

    try:
        async with engine.connect() as conn:
            code = await conn.run_sync(render)
    finally:
        await engine.dispose()
    assert "aigw" not in code
    assert "sa.DateTime(timezone=True)" in code
    assert "sa.Numeric(precision=18, scale=9)" in code
    assert "sa.Numeric(precision=18, scale=6)" in code

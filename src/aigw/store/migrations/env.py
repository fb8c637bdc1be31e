"""Alembic environment (async). Configured by ``aigw.store.migrate.alembic_config``; the URL arrives in
``config.attributes["url"]``."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from aigw.store.db import make_engine
from aigw.store.migrate import PG_MIGRATION_LOCK_KEY, context_options


def _url() -> str:
    url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: build the config with aigw.store.migrate.alembic_config(url)")
    return str(url)


def run_offline() -> None:
    """``--sql`` mode: emit the DDL as text instead of running it."""
    url = _url()
    context.configure(url=url, literal_binds=True, **context_options(url.split(":", 1)[0].split("+", 1)[0]))
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await _begin_locked(conn)
            await conn.run_sync(_migrate)  # Alembic joins this transaction: every step commits together or not at all
            await conn.commit()
    finally:
        await engine.dispose()


async def _begin_locked(conn: AsyncConnection) -> None:
    """Open the migration's transaction holding a lock, so concurrent migrators (several replicas or workers
    starting at once) run one after another; the later ones then find the database at head."""
    if conn.dialect.name == "sqlite":
        # Outside any transaction: batch mode rebuilds tables by copy, drop and rename, which enforced foreign keys
        # would break; and a rebuild can hold the lock longer than the usual busy_timeout.
        await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await conn.exec_driver_sql("PRAGMA busy_timeout=60000")
        await conn.commit()
        await conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, taken before Alembic reads its version
    elif conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK_KEY})  # released at commit


def run_online() -> None:
    # A private loop (loop_factory) leaves the thread's current-loop setting alone, unlike asyncio.run().
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(_run_online(_url()))


if context.is_offline_mode():
    run_offline()
else:
    run_online()

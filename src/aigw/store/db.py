"""Engine construction for the two supported backends, and the readiness ping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"

# Applied on every new SQLite connection: WAL lets readers run beside the one writer, busy_timeout makes a writer
# wait for the lock instead of failing at once, NORMAL is durable enough under WAL, and SQLite leaves foreign keys
# off unless asked.
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
)


def make_engine(url: str) -> AsyncEngine:
    """An engine for a ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URL. The caller disposes it."""
    parsed = make_url(url)
    if parsed.drivername == SQLITE_DRIVER:
        return _sqlite_engine(parsed)
    if parsed.drivername == POSTGRES_DRIVER:
        return create_async_engine(
            parsed,
            pool_size=10,
            max_overflow=10,
            pool_timeout=10,  # an exhausted pool should fail an admin call, not hang it
            pool_recycle=1800,  # outlive idle-connection reapers (PgBouncer, cloud proxies)
            connect_args={"server_settings": {"application_name": "aigw"}},
        )
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}: use {SQLITE_DRIVER}:// or {POSTGRES_DRIVER}://"
    )


def _sqlite_engine(url: URL) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if not in_memory and not database.startswith("file:"):
        # A fresh install points at e.g. ./data/aigw.db; SQLite will not create the directory itself.
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


def _set_sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


async def ping(engine: AsyncEngine) -> None:
    """Round-trip ``SELECT 1``; raises if the database cannot be reached. Callers bound it with a timeout."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))

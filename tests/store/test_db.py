"""Engine construction and the readiness ping, against real databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.db import make_engine, ping


async def test_sqlite_pragmas_apply_to_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "aigw.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        # Two connections at once: the settings come from the connect hook, not from a one-off.
        async with engine.connect() as a, engine.connect() as b:
            for conn in (a, b):
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
                assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
                assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
                assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert path.parent.is_dir()
    finally:
        await engine.dispose()


async def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception, match="FOREIGN KEY"):
                await conn.execute(
                    text(
                        "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at, updated_at)"
                        " VALUES ('k', 'no-such-tenant', 'h', 'p', '2026-01-01', '2026-01-01')"
                    )
                )
    finally:
        await engine.dispose()


def test_make_engine_rejects_other_drivers() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        make_engine("mysql+aiomysql://u@localhost/db")
    with pytest.raises(ValueError, match="unsupported database URL"):
        make_engine("postgresql://postgres@localhost/db")  # sync driver: would block the loop


async def test_ping_succeeds(db_engine: AsyncEngine) -> None:
    await ping(db_engine)


async def test_ping_raises_when_unreachable() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        with pytest.raises(OSError):
            await ping(engine)
    finally:
        await engine.dispose()

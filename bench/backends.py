"""What the production profile runs against: a fresh PostgreSQL database per run, and an emptied Redis database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_postgres(server_url: str) -> Iterator[str]:
    """Create ``aigw_bench_<pid>`` on the server of ``server_url`` (a ``postgresql+asyncpg://`` URL whose database is
    used only to connect), yield the gateway's URL for it, and drop it afterwards."""
    parts = urlsplit(server_url)
    name = f"aigw_bench_{os.getpid()}"
    admin_dsn = urlunsplit(parts._replace(scheme="postgresql"))
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_execute(admin_dsn, drop, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        asyncio.run(_execute(admin_dsn, drop))


def flush_redis(url: str) -> None:
    """FLUSHDB on the bench's Redis database (only that database: the one in the URL, 14 by default)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()

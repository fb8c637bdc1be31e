"""Fixtures for real services: SQLite files, throwaway PostgreSQL databases, a Redis database.

Loaded for every test by ``pytest_plugins = ["tests.support.databases"]`` in the root conftest.

* ``sqlite_url``: a fresh SQLite file migrated to head.
* ``pg_url``: a PostgreSQL database migrated to head and empty: created (random name) and migrated once per session,
  its tables truncated before each test, dropped at the end. Do not change its schema in a test.
* ``empty_sqlite_url`` / ``empty_pg_url``: a brand-new database per test, never migrated (for migration tests).
* ``db_url``: parametrised over both backends; ``db_engine``: an engine on it, disposed afterwards.
* ``redis_url``: database 15 of the test Redis, flushed before and after, and held exclusively meanwhile: test
  sessions running at the same time on this host (several checkouts, or an editor's test runner) share that one
  database, and a flush from one would wipe the others' state mid-test (e.g. a circuit just reopened reads as
  closed). A lock file per Redis server and database makes them take turns, one test at a time.

Where the services are: ``AIGW_TEST_PG_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``; the
role must be allowed to create databases) and ``AIGW_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
An unreachable service skips its tests with a loud reason; with ``AIGW_REQUIRE_SERVICES=1`` (CI) it fails them.

Fixtures that talk to the services are synchronous and run their async calls on a private event loop, so they do
not depend on (or disturb) pytest-asyncio's loop scopes.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.db import make_engine
from aigw.store.migrate import upgrade_to_head
from aigw.store.tables import metadata

__all__ = [
    "db_engine",
    "db_url",
    "empty_pg_url",
    "empty_sqlite_url",
    "pg_server",
    "pg_session_url",
    "pg_url",
    "redis_server",
    "redis_url",
    "require_service",
    "run_private",
    "sqlite_template",
    "sqlite_url",
]

PG_URL_ENV = "AIGW_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL_ENV = "AIGW_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_TEST_DB = 15  # flushed by the fixture: never point this at data you keep
REDIS_LOCK_TIMEOUT_S = 300.0  # how long a test waits for another session's test to let go of the test database
REQUIRE_ENV = "AIGW_REQUIRE_SERVICES"
PROBE_TIMEOUT_S = 5.0

T = TypeVar("T")


def run_private(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own event loop, leaving the thread's current loop alone."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coro)


def require_service(name: str, url: str, env_var: str, check: Callable[[], Awaitable[object]]) -> None:
    """Skip the calling test (fail it under ``AIGW_REQUIRE_SERVICES=1``) unless ``check()`` succeeds in time."""

    async def probe() -> None:
        await asyncio.wait_for(check(), PROBE_TIMEOUT_S)

    try:
        run_private(probe())
    except Exception as exc:
        reason = f"{name} not reachable at {_redact(url)} ({type(exc).__name__}: {exc})"
    else:
        return
    # Outside the except block, so the report shows the reason alone rather than a chained traceback.
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure", pytrace=False)
    pytest.skip(
        f"!!! {reason}: these tests are SKIPPED. Start {name} or set {env_var} "
        f"(set {REQUIRE_ENV}=1 to turn this skip into a failure) !!!"
    )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


# -- PostgreSQL ------------------------------------------------------------------------------------------------


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _pg_execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=PROBE_TIMEOUT_S)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class PgServer:
    """A reachable PostgreSQL server (``base_url`` names a database the role can connect to)."""

    base_url: str

    def url_for(self, database: str) -> str:
        return make_url(self.base_url).set(database=database).render_as_string(hide_password=False)

    def create_database(self) -> str:
        """A new, empty database with a random name (safe under pytest-xdist); returns its name."""
        name = f"aigw_t_{uuid.uuid4().hex[:16]}"
        run_private(_pg_execute(self.base_url, f"CREATE DATABASE {_quote_ident(name)}"))
        return name

    def drop_database(self, name: str) -> None:
        run_private(_pg_execute(self.base_url, f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)"))


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    base_url = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)

    async def check() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(base_url))
        await conn.close()

    require_service("PostgreSQL", base_url, PG_URL_ENV, check)
    return PgServer(base_url)


@pytest.fixture(scope="session")
def pg_session_url(pg_server: PgServer) -> Iterator[str]:
    """A brand-new database for this session (or xdist worker), migrated to head once, dropped at the end.

    A database per test costs ~0.3 s to create; emptying this one costs a few milliseconds (see ``pg_url``).
    """
    name = pg_server.create_database()
    try:
        upgrade_to_head(pg_server.url_for(name))
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_url(pg_session_url: str) -> str:
    """The session's migrated database, emptied for this test. Tests must not change its schema: use
    ``empty_pg_url`` (and migrate it yourself) for that."""
    tables = ", ".join(_quote_ident(t.name) for t in metadata.sorted_tables)
    run_private(
        _pg_execute(
            pg_session_url,
            "SET lock_timeout = '5s'",  # an engine a test forgot to dispose fails this loudly instead of hanging
            f"TRUNCATE {tables} RESTART IDENTITY CASCADE",
        )
    )
    return pg_session_url


@pytest.fixture
def empty_pg_url(pg_server: PgServer) -> Iterator[str]:
    """A brand-new database that was never migrated, dropped afterwards."""
    name = pg_server.create_database()
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database(name)


# -- SQLite ----------------------------------------------------------------------------------------------------


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; each test gets a copy (cheaper than migrating again)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "aigw.db"
    upgrade_to_head(_sqlite_url(path))
    # The migration's engine is disposed: its last connection checkpointed the WAL, so one file holds everything.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh SQLite file, migrated to head."""
    path = tmp_path / "aigw.db"
    shutil.copyfile(sqlite_template, path)
    return _sqlite_url(path)


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """A SQLite file that does not exist yet, in a directory that does not exist yet."""
    return _sqlite_url(tmp_path / "not-yet" / "created" / "aigw.db")


# -- both backends ---------------------------------------------------------------------------------------------

_URL_FIXTURES = {"sqlite": "sqlite_url", "postgres": "pg_url"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database URL, once per backend."""
    url = request.getfixturevalue(_URL_FIXTURES[request.param])
    assert isinstance(url, str)
    return url


@pytest.fixture
async def db_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


# -- Redis -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> str:
    base_url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)

    async def check() -> None:
        client = aioredis.from_url(base_url)
        try:
            await client.ping()
        finally:
            await client.aclose()

    require_service("Redis", base_url, REDIS_URL_ENV, check)
    return base_url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The test Redis with database number 15, empty at the start and flushed afterwards; no other test session on
    this host uses it meanwhile (see the module docstring)."""
    url = urlunsplit(urlsplit(redis_server)._replace(path=f"/{REDIS_TEST_DB}"))

    async def flush() -> None:
        client = aioredis.from_url(url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    with _host_lock("redis-" + hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:16]):
        run_private(flush())
        try:
            yield url
        finally:
            run_private(flush())


@contextmanager
def _host_lock(name: str, timeout: float = REDIS_LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock shared by every process on this host (an advisory ``flock``, released by the kernel if its
    holder dies); fails the test if another holds it longer than ``timeout``."""
    path = Path(tempfile.gettempdir()) / f"aigw-tests-{name}.lock"
    with path.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{path}: another test session held the test database for over {timeout:.0f} s")
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

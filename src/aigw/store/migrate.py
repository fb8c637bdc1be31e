"""Alembic, driven from code: no alembic.ini to ship or find. Used by ``aigw migrate`` and ``aigw serve``.

``upgrade_to_head`` and ``downgrade_to_base`` are synchronous and run the async migration environment on a private
event loop, so they work from a CLI and from a worker thread (``await asyncio.to_thread(upgrade_to_head, url)``)
while another loop runs elsewhere. They refuse to run on a thread whose loop is running, which would deadlock.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.tables import metadata
from aigw.store.types import Money, UTCDateTime

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Alembic's `context` and `op` are process-wide proxies, so two migrations in one process must not overlap.
# Across processes, env.py serialises them with a database lock: SQLite's write lock, or this advisory lock.
_RUN_LOCK = threading.Lock()
PG_MIGRATION_LOCK_KEY = 0x61696777  # "aigw"


def alembic_config(url: str | None = None) -> Config:
    """The Alembic config; also usable with ``alembic.command`` directly (e.g. ``command.revision``)."""
    cfg = Config()
    # set_main_option goes through ConfigParser interpolation: a literal % must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d_%%(slug)s")
    if url is not None:
        cfg.attributes["url"] = url  # attributes, not sqlalchemy.url: no interpolation of passwords with %
    return cfg


def context_options(dialect_name: str) -> dict[str, Any]:
    """Options for ``context.configure``, shared by env.py and ``schema_diff`` so both compare the same way."""
    return {
        "target_metadata": metadata,
        "compare_type": True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        "render_as_batch": dialect_name == "sqlite",
        "render_item": _render_item,
    }


def _render_item(type_: str, obj: Any, _ctx: AutogenContext) -> str | Literal[False]:
    """Generated migrations get the plain types our column types store, so they never import aigw."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, Money):
        return f"sa.Numeric(precision={obj.precision}, scale={obj.scale})"
    return False


def upgrade_to_head(url: str) -> None:
    _refuse_running_loop()
    with _RUN_LOCK:
        command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    _refuse_running_loop()
    with _RUN_LOCK:
        command.downgrade(alembic_config(url), "base")


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for a database that was never migrated."""

    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    """Differences between the database and ``tables.metadata`` as Alembic autogenerate sees them ([] = none)."""

    def compare(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts=context_options(conn.dialect.name))
        diff: list[Any] = compare_metadata(ctx, metadata)
        return diff

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


def _refuse_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "migrations block; call them outside the event loop, e.g. await asyncio.to_thread(upgrade_to_head, url)"
    )

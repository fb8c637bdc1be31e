"""Persistence: SQLAlchemy Core tables, Alembic migrations, and the repositories the gateway uses.

The only package that imports SQLAlchemy. Backends: SQLite (aiosqlite, the embedded default) and PostgreSQL
(asyncpg). Migrations are in ``aigw.store.migrate``, not imported here: only migrating needs Alembic.
"""

from aigw.store.db import make_engine, ping
from aigw.store.errors import DuplicateKeyError, StoreError, TenantNotFoundError
from aigw.store.tenants import UNSET, ApiKey, KeyGrant, Tenant, TenantRepo
from aigw.store.usage import DayUsage, ModelUsage, TenantUsage, UsageRecord, UsageRepo, UsageReport, UsageSummary

__all__ = [
    "UNSET",
    "ApiKey",
    "DayUsage",
    "DuplicateKeyError",
    "KeyGrant",
    "ModelUsage",
    "StoreError",
    "Tenant",
    "TenantNotFoundError",
    "TenantRepo",
    "TenantUsage",
    "UsageRecord",
    "UsageRepo",
    "UsageReport",
    "UsageSummary",
    "make_engine",
    "ping",
]

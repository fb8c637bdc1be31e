"""Tenants and their API keys: admin CRUD, and the key grants the in-memory key cache is built from.

Every write stamps ``updated_at`` from the injected clock; ``grants_changed_since`` polls on it so that several
worker processes see each other's key changes without a query per request.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, Final

from sqlalchemy import BindParameter, CompoundSelect, Insert, Select, bindparam, insert, select, union_all, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aigw.store.errors import DuplicateKeyError, TenantNotFoundError
from aigw.store.tables import api_keys, tenants

__all__ = [
    "SYNC_OVERLAP",
    "UNSET",
    "ApiKey",
    "DuplicateKeyError",
    "KeyGrant",
    "Tenant",
    "TenantNotFoundError",
    "TenantRepo",
]

# How far back each sync looks behind its high-water mark. A writer takes its timestamp before it commits, and on
# SQLite it may then wait up to busy_timeout (5 s) for the lock, so a row can become visible with an updated_at
# older than a mark another process already returned. Re-reading that window makes such rows show up anyway;
# re-applying a grant is harmless. It also absorbs modest clock skew between hosts.
SYNC_OVERLAP: Final = timedelta(seconds=10)


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET: Final = _Unset.UNSET
"""Default of ``update_tenant`` arguments: "leave as is", distinct from ``None`` ("clear")."""


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    rate_limit_rpm: int | None
    rate_limit_tpm: int | None
    monthly_budget_usd: Decimal | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """One entry of the key cache: a key hash and the tenant it authenticates as."""

    key_id: str
    key_hash: str
    tenant: Tenant
    revoked: bool  # the key is revoked or its tenant deleted: drop it from the cache


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TenantRepo:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], datetime] = _utcnow,
        sync_overlap: timedelta = SYNC_OVERLAP,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._overlap = sync_overlap

    # -- tenants -----------------------------------------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        rate_limit_rpm: int | None = None,
        rate_limit_tpm: int | None = None,
        monthly_budget_usd: Decimal | None = None,
        *,
        key_hash: str,
        key_prefix: str,
    ) -> tuple[Tenant, ApiKey]:
        """Create a tenant and its first key together: a tenant nobody can authenticate as is never left behind."""
        now = self._clock()
        tenant_id, key_id = uuid.uuid4().hex, _new_key_id()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(tenants).values(
                        id=tenant_id,
                        name=name,
                        rate_limit_rpm=rate_limit_rpm,
                        rate_limit_tpm=rate_limit_tpm,
                        monthly_budget_usd=monthly_budget_usd,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await conn.execute(_insert_key(key_id, tenant_id, key_hash, key_prefix, now))
                tenant = await _live_tenant(conn, tenant_id)
                key = await _key(conn, key_id)
        except IntegrityError as exc:
            raise DuplicateKeyError("an API key with this hash already exists") from exc
        assert tenant is not None and key is not None  # just written in this transaction
        return tenant, key

    async def list_tenants(self) -> list[Tenant]:
        query = select(tenants).where(tenants.c.deleted_at.is_(None)).order_by(tenants.c.created_at, tenants.c.id)
        async with self._engine.connect() as conn:
            return [_tenant(row) for row in (await conn.execute(query)).mappings()]

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._engine.connect() as conn:
            return await _live_tenant(conn, tenant_id)

    async def update_tenant(
        self,
        tenant_id: str,
        *,
        name: str | _Unset = UNSET,
        rate_limit_rpm: int | None | _Unset = UNSET,
        rate_limit_tpm: int | None | _Unset = UNSET,
        monthly_budget_usd: Decimal | None | _Unset = UNSET,
    ) -> Tenant | None:
        """Change the given fields (``None`` clears a limit). None if the tenant does not exist or is deleted."""
        given = {
            "name": name,
            "rate_limit_rpm": rate_limit_rpm,
            "rate_limit_tpm": rate_limit_tpm,
            "monthly_budget_usd": monthly_budget_usd,
        }
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not UNSET}
        async with self._engine.begin() as conn:
            if changes:
                await conn.execute(
                    update(tenants)
                    .where(tenants.c.id == tenant_id, tenants.c.deleted_at.is_(None))
                    .values(**changes, updated_at=self._clock())
                )
            return await _live_tenant(conn, tenant_id)

    async def delete_tenant(self, tenant_id: str) -> list[str] | None:
        """Soft-delete the tenant and revoke its keys. Returns the ids of the keys revoked now; None if not found."""
        now = self._clock()
        async with self._engine.begin() as conn:
            # The tenant row is written first: that takes the write lock (SQLite) or the row lock (PostgreSQL, which
            # create_key's FOR SHARE waits on), so no key can be added for this tenant while we collect them.
            deleted = await conn.execute(
                update(tenants)
                .where(tenants.c.id == tenant_id, tenants.c.deleted_at.is_(None))
                .values(deleted_at=now, updated_at=now)
            )
            if deleted.rowcount == 0:
                return None
            active = api_keys.c.tenant_id == tenant_id, api_keys.c.revoked_at.is_(None)
            ids = list(
                (await conn.execute(select(api_keys.c.id).where(*active).order_by(api_keys.c.created_at))).scalars()
            )
            if ids:
                await conn.execute(update(api_keys).where(*active).values(revoked_at=now, updated_at=now))
        return ids

    # -- keys --------------------------------------------------------------------------------------------------

    async def create_key(self, tenant_id: str, *, key_hash: str, key_prefix: str) -> ApiKey:
        now = self._clock()
        key_id = _new_key_id()
        try:
            async with self._engine.begin() as conn:
                live = select(tenants.c.id).where(tenants.c.id == tenant_id, tenants.c.deleted_at.is_(None))
                # FOR SHARE: a concurrent delete_tenant waits for us, or we see its result (no-op on SQLite).
                if (await conn.execute(live.with_for_update(read=True))).first() is None:
                    raise TenantNotFoundError(f"no tenant with id {tenant_id!r}")
                await conn.execute(_insert_key(key_id, tenant_id, key_hash, key_prefix, now))
                key = await _key(conn, key_id)
        except IntegrityError as exc:
            raise DuplicateKeyError("an API key with this hash already exists") from exc
        assert key is not None
        return key

    async def revoke_key(self, key_id: str) -> ApiKey | None:
        """Revoke a key; revoking it again changes nothing. None if there is no such key."""
        now = self._clock()
        async with self._engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now, updated_at=now)
            )
            return await _key(conn, key_id)

    # -- key cache feed ----------------------------------------------------------------------------------------

    async def load_grants(self) -> list[KeyGrant]:
        """Every usable key (not revoked, tenant not deleted). Take the sync's first mark before calling this."""
        query = _grants().where(api_keys.c.revoked_at.is_(None), tenants.c.deleted_at.is_(None))
        async with self._engine.connect() as conn:
            return [_grant(row) for row in (await conn.execute(query)).mappings()]

    async def grants_changed_since(self, since: datetime) -> tuple[list[KeyGrant], datetime]:
        """Keys whose own row or whose tenant's row changed at or after ``since`` minus the sync overlap, revoked
        ones included, and the new high-water mark to pass next time (never earlier than ``since``)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_changed_since(), {"floor": since - self._overlap})).mappings().all()
        mark = since
        grants: dict[str, KeyGrant] = {}
        for row in rows:
            mark = max(mark, row["key_updated_at"], row["updated_at"])
            grants[row["key_id"]] = _grant(row)
        return list(grants.values()), mark


def _new_key_id() -> str:
    return "key_" + secrets.token_hex(12)


def _insert_key(key_id: str, tenant_id: str, key_hash: str, prefix: str, now: datetime) -> Insert:
    return insert(api_keys).values(
        id=key_id, tenant_id=tenant_id, key_hash=key_hash, prefix=prefix, created_at=now, updated_at=now
    )


@cache
def _changed_since() -> CompoundSelect[Any]:
    """Built once: the sync runs every second in every process, and building the statement cost more than running
    it (it also left reference cycles for the garbage collector)."""
    floor: BindParameter[datetime] = bindparam("floor")
    return union_all(
        _grants().where(api_keys.c.updated_at >= floor),  # uses ix_api_keys_updated_at
        _grants().where(tenants.c.updated_at >= floor),
    )


def _grants() -> Select[Any]:
    # Key columns are labelled so the tenant's columns keep their own names (see _tenant).
    return select(
        api_keys.c.id.label("key_id"),
        api_keys.c.key_hash,
        api_keys.c.revoked_at.label("key_revoked_at"),
        api_keys.c.updated_at.label("key_updated_at"),
        *tenants.c,
    ).select_from(api_keys.join(tenants, api_keys.c.tenant_id == tenants.c.id))


async def _live_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    query = select(tenants).where(tenants.c.id == tenant_id, tenants.c.deleted_at.is_(None))
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else _tenant(row)


async def _key(conn: AsyncConnection, key_id: str) -> ApiKey | None:
    row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
    if row is None:
        return None
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _tenant(row: RowMapping) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        rate_limit_rpm=row["rate_limit_rpm"],
        rate_limit_tpm=row["rate_limit_tpm"],
        monthly_budget_usd=row["monthly_budget_usd"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
    )


def _grant(row: RowMapping) -> KeyGrant:
    tenant = _tenant(row)
    return KeyGrant(
        key_id=row["key_id"],
        key_hash=row["key_hash"],
        tenant=tenant,
        revoked=row["key_revoked_at"] is not None or tenant.deleted_at is not None,
    )

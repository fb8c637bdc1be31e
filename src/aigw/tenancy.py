"""API keys: format, hashing, and the in-memory key cache the request path authenticates against.

The request path never queries the database: the cache is filled at startup, updated at once by this process's
admin writes, and a background task picks up other processes' changes (``key_sync_interval_s``).
Keys are 256-bit random values, so an unsalted SHA-256 is a sufficient at-rest hash (no password stretching is
needed for keys nobody chose); only the hash and a short display prefix are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aigw.errors import Unauthorized
from aigw.store.tenants import KeyGrant, TenantRepo

KEY_PREFIX = "gw-sk-"
log = logging.getLogger("aigw.tenancy")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:12]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the bearer key, carried through the request."""

    tenant_id: str
    key_id: str
    rate_limit_rpm: int | None
    rate_limit_tpm: int | None
    monthly_budget_usd: Decimal | None


class KeyCache:
    def __init__(self) -> None:
        self._by_hash: dict[str, Principal] = {}
        # Revocation and deletion are permanent. Tombstones stop a sync that read the rows just before a
        # revocation from bringing the key back.
        self._revoked: set[str] = set()
        self._deleted_tenants: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("Missing API key: send `Authorization: Bearer gw-sk-...`")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("Malformed Authorization header: expected `Bearer gw-sk-...`")
        principal = self._by_hash.get(hash_key(key))
        if principal is None:
            raise Unauthorized("Incorrect API key provided (unknown or revoked)")
        return principal

    def apply(self, grants: Iterable[KeyGrant]) -> None:
        for g in grants:
            if g.revoked or g.tenant.deleted_at is not None:
                self._revoked.add(g.key_id)
                self._by_hash.pop(g.key_hash, None)
            elif g.key_id in self._revoked or g.tenant.id in self._deleted_tenants:
                continue
            else:
                t = g.tenant
                self._by_hash[g.key_hash] = Principal(
                    t.id, g.key_id, t.rate_limit_rpm, t.rate_limit_tpm, t.monthly_budget_usd
                )

    def revoke(self, key_ids: Iterable[str]) -> None:
        ids = set(key_ids)
        self._revoked |= ids
        for h in [h for h, p in self._by_hash.items() if p.key_id in ids]:
            del self._by_hash[h]

    def delete_tenant(self, tenant_id: str, key_ids: Iterable[str]) -> None:
        self._deleted_tenants.add(tenant_id)
        self.revoke(key_ids)
        for h in [h for h, p in self._by_hash.items() if p.tenant_id == tenant_id]:
            del self._by_hash[h]

    def update_tenant(self, tenant_id: str, rpm: int | None, tpm: int | None, budget: Decimal | None) -> None:
        for h, p in list(self._by_hash.items()):
            if p.tenant_id == tenant_id:
                self._by_hash[h] = Principal(tenant_id, p.key_id, rpm, tpm, budget)


class KeySync:
    """Loads every active key at start, then polls for rows changed since the last high-water mark."""

    def __init__(self, repo: TenantRepo, cache: KeyCache, interval_s: float) -> None:
        self._repo = repo
        self._cache = cache
        self._interval = interval_s
        self._since = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.loaded = False

    async def load(self) -> None:
        # Mark before loading so a change racing the load is seen again by the first sync (re-applying is harmless).
        since = datetime.now(UTC) - timedelta(seconds=1)
        self._cache.apply(await self._repo.load_grants())
        self._since = since
        self.loaded = True

    async def sync_once(self) -> None:
        grants, self._since = await self._repo.grants_changed_since(self._since)
        self._cache.apply(grants)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aigw-key-sync")

    def wake(self) -> None:
        """Sync now rather than at the next poll (a key-change notice from another process arrived)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await (self.sync_once() if self.loaded else self.load())
            except Exception as exc:  # the database may be down; auth keeps working from the cache
                log.warning("key sync failed (%s); serving from the cached keys", type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

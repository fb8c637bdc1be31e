"""TenantRepo on SQLite and PostgreSQL: admin CRUD, keys, and the key-cache feed."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.db import make_engine
from aigw.store.tenants import (
    SYNC_OVERLAP,
    DuplicateKeyError,
    KeyGrant,
    TenantNotFoundError,
    TenantRepo,
)

T0 = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)


class StepClock:
    """Each call returns the current time, then advances by ``step`` (strictly increasing timestamps)."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(minutes=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        now = self.now
        self.now += self.step
        return now


def new_hash() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def repo(db_engine: AsyncEngine, clock: StepClock) -> TenantRepo:
    return TenantRepo(db_engine, clock=clock)


def by_id(grants: list[KeyGrant]) -> dict[str, KeyGrant]:
    return {g.key_id: g for g in grants}


# -- tenants -------------------------------------------------------------------------------------------------------


async def test_create_and_get(repo: TenantRepo) -> None:
    tenant, key = await repo.create_tenant(
        "acme", 60, 100_000, Decimal("12.5"), key_hash=new_hash(), key_prefix="gw-sk-abc"
    )
    assert len(tenant.id) == 32 and int(tenant.id, 16) >= 0
    assert (tenant.name, tenant.rate_limit_rpm, tenant.rate_limit_tpm) == ("acme", 60, 100_000)
    assert tenant.monthly_budget_usd == Decimal("12.5") and isinstance(tenant.monthly_budget_usd, Decimal)
    assert tenant.created_at == tenant.updated_at == T0 and tenant.created_at.tzinfo is UTC
    assert tenant.deleted_at is None
    assert key.id.startswith("key_") and len(key.id) == 28
    assert (key.tenant_id, key.prefix, key.revoked_at) == (tenant.id, "gw-sk-abc", None)
    assert await repo.get_tenant(tenant.id) == tenant
    assert await repo.get_tenant("0" * 32) is None


async def test_create_without_limits(repo: TenantRepo) -> None:
    tenant, _ = await repo.create_tenant("free", key_hash=new_hash(), key_prefix="p")
    assert (tenant.rate_limit_rpm, tenant.rate_limit_tpm, tenant.monthly_budget_usd) == (None, None, None)


async def test_timestamps_keep_the_instant_and_come_back_in_utc(db_engine: AsyncEngine) -> None:
    plus_five = datetime(2026, 11, 26, 17, 30, 0, 999999, tzinfo=timezone(timedelta(hours=5)))
    repo = TenantRepo(db_engine, clock=lambda: plus_five)
    tenant, key = await repo.create_tenant("tz", key_hash=new_hash(), key_prefix="p")
    assert tenant.created_at == plus_five and tenant.created_at.tzinfo is UTC
    assert tenant.created_at.isoformat() == "2026-11-26T12:30:00.999999+00:00"
    assert key.created_at == plus_five


async def test_naive_timestamps_are_refused(db_engine: AsyncEngine) -> None:
    repo = TenantRepo(db_engine, clock=lambda: datetime(2026, 1, 1))
    with pytest.raises(Exception, match="naive datetime"):
        await repo.create_tenant("naive", key_hash=new_hash(), key_prefix="p")


async def test_list_is_ordered_by_creation_and_hides_deleted(repo: TenantRepo) -> None:
    names = ["b", "a", "c"]
    created = [(await repo.create_tenant(n, key_hash=new_hash(), key_prefix="p"))[0] for n in names]
    assert [t.name for t in await repo.list_tenants()] == names
    await repo.delete_tenant(created[1].id)
    assert [t.name for t in await repo.list_tenants()] == ["b", "c"]


async def test_update_changes_only_what_is_given(repo: TenantRepo) -> None:
    tenant, _ = await repo.create_tenant("acme", 60, 1000, Decimal("5"), key_hash=new_hash(), key_prefix="p")

    renamed = await repo.update_tenant(tenant.id, name="acme2")
    assert renamed is not None
    assert (renamed.name, renamed.rate_limit_rpm, renamed.rate_limit_tpm) == ("acme2", 60, 1000)
    assert renamed.monthly_budget_usd == Decimal("5")
    assert renamed.updated_at > tenant.updated_at and renamed.created_at == tenant.created_at

    cleared = await repo.update_tenant(tenant.id, rate_limit_rpm=None, monthly_budget_usd=Decimal("7.123456"))
    assert cleared is not None
    assert (cleared.rate_limit_rpm, cleared.rate_limit_tpm) == (None, 1000)
    assert cleared.monthly_budget_usd == Decimal("7.123456")
    assert cleared.updated_at > renamed.updated_at
    assert await repo.get_tenant(tenant.id) == cleared

    unchanged = await repo.update_tenant(tenant.id)
    assert unchanged == cleared  # nothing given: nothing written, updated_at not bumped


async def test_update_accepts_a_changes_mapping(repo: TenantRepo) -> None:
    """The admin API passes only the fields present in the request body."""
    tenant, _ = await repo.create_tenant("acme", 60, key_hash=new_hash(), key_prefix="p")
    changes: dict[str, Any] = {"rate_limit_tpm": 500, "rate_limit_rpm": None}
    updated = await repo.update_tenant(tenant.id, **changes)
    assert updated is not None and (updated.rate_limit_rpm, updated.rate_limit_tpm) == (None, 500)


async def test_update_missing_or_deleted_tenant(repo: TenantRepo) -> None:
    assert await repo.update_tenant("0" * 32, name="x") is None
    tenant, _ = await repo.create_tenant("gone", key_hash=new_hash(), key_prefix="p")
    await repo.delete_tenant(tenant.id)
    assert await repo.update_tenant(tenant.id, name="back") is None


async def test_delete_revokes_keys_and_hides_tenant(repo: TenantRepo) -> None:
    tenant, first = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    second = await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")
    already = await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")
    await repo.revoke_key(already.id)
    other, other_key = await repo.create_tenant("other", key_hash=new_hash(), key_prefix="p")

    assert await repo.delete_tenant(tenant.id) == [first.id, second.id]  # only the keys revoked now
    assert await repo.get_tenant(tenant.id) is None
    assert [t.id for t in await repo.list_tenants()] == [other.id]
    for key_id in (first.id, second.id):
        key = await repo.revoke_key(key_id)  # idempotent: reports the existing revocation
        assert key is not None and key.revoked_at is not None
    assert {g.key_id for g in await repo.load_grants()} == {other_key.id}

    assert await repo.delete_tenant(tenant.id) is None  # already deleted
    assert await repo.delete_tenant("0" * 32) is None
    with pytest.raises(TenantNotFoundError):
        await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")


async def test_delete_tenant_without_active_keys(repo: TenantRepo) -> None:
    tenant, key = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    await repo.revoke_key(key.id)
    assert await repo.delete_tenant(tenant.id) == []


# -- keys ----------------------------------------------------------------------------------------------------------


async def test_duplicate_key_hash(repo: TenantRepo) -> None:
    taken = new_hash()
    tenant, _ = await repo.create_tenant("acme", key_hash=taken, key_prefix="p")
    with pytest.raises(DuplicateKeyError):
        await repo.create_key(tenant.id, key_hash=taken, key_prefix="p")
    # The tenant and its first key are one transaction: a clash leaves no key-less tenant behind.
    with pytest.raises(DuplicateKeyError):
        await repo.create_tenant("clash", key_hash=taken, key_prefix="p")
    assert [t.name for t in await repo.list_tenants()] == ["acme"]
    assert len(await repo.load_grants()) == 1


async def test_key_for_missing_tenant(repo: TenantRepo) -> None:
    with pytest.raises(TenantNotFoundError):
        await repo.create_key("0" * 32, key_hash=new_hash(), key_prefix="p")


async def test_create_key(repo: TenantRepo, clock: StepClock) -> None:
    tenant, _ = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    expected_at = clock.now
    key = await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="gw-sk-xyz")
    assert (key.tenant_id, key.prefix, key.created_at, key.revoked_at) == (tenant.id, "gw-sk-xyz", expected_at, None)


async def test_revoke_is_idempotent(repo: TenantRepo) -> None:
    _, key = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    revoked = await repo.revoke_key(key.id)
    assert revoked is not None and revoked.revoked_at is not None and revoked.revoked_at > key.created_at
    again = await repo.revoke_key(key.id)
    assert again == revoked  # the clock moved on, but the first revocation stands
    assert await repo.revoke_key("key_" + "0" * 24) is None


# -- key cache feed ------------------------------------------------------------------------------------------------


async def test_load_grants_excludes_revoked_and_deleted(repo: TenantRepo) -> None:
    hashes = [new_hash() for _ in range(3)]
    live, live_key = await repo.create_tenant("live", 10, 20, Decimal("3"), key_hash=hashes[0], key_prefix="p")
    revoked = await repo.create_key(live.id, key_hash=new_hash(), key_prefix="p")
    await repo.revoke_key(revoked.id)
    gone, _ = await repo.create_tenant("gone", key_hash=hashes[1], key_prefix="p")
    await repo.delete_tenant(gone.id)

    grants = await repo.load_grants()
    assert grants == [KeyGrant(key_id=live_key.id, key_hash=hashes[0], tenant=live, revoked=False)]


async def test_grants_changed_since_moves_its_mark(repo: TenantRepo, clock: StepClock) -> None:
    tenant, k1 = await repo.create_tenant("acme", 60, key_hash=new_hash(), key_prefix="p")
    k2 = await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")
    mark0 = clock.now  # the clock steps a minute per write: far more than the sync overlap
    assert timedelta(minutes=1) > SYNC_OVERLAP

    revoked_at = clock.now
    await repo.revoke_key(k1.id)
    k3_at = clock.now
    k3 = await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")
    grants, mark1 = await repo.grants_changed_since(mark0)
    assert {k: g.revoked for k, g in by_id(grants).items()} == {k1.id: True, k3.id: False}
    assert revoked_at < mark1 == k3_at

    # A tenant change re-delivers all of its keys, with the new limits.
    await repo.update_tenant(tenant.id, rate_limit_rpm=120)
    grants, mark2 = await repo.grants_changed_since(mark1)
    assert {k: g.revoked for k, g in by_id(grants).items()} == {k1.id: True, k2.id: False, k3.id: False}
    assert {g.tenant.rate_limit_rpm for g in grants} == {120}
    assert mark2 > mark1

    # Deleting the tenant turns every one of its keys into a revocation.
    await repo.delete_tenant(tenant.id)
    grants, mark3 = await repo.grants_changed_since(mark2)
    assert {k: g.revoked for k, g in by_id(grants).items()} == {k1.id: True, k2.id: True, k3.id: True}
    assert all(g.tenant.deleted_at is not None for g in grants)
    assert mark3 > mark2

    # Nothing new: no grants, and the mark stays where the caller had it.
    later = clock.now + timedelta(hours=1)
    assert await repo.grants_changed_since(later) == ([], later)


async def test_grants_changed_since_sees_late_commits_within_the_overlap(db_engine: AsyncEngine) -> None:
    """A write stamped just before a mark another sync already returned (it committed late) is not lost."""
    times = iter([T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=5) - SYNC_OVERLAP / 2])
    repo = TenantRepo(db_engine, clock=lambda: next(times))
    tenant, _ = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")
    _, mark = await repo.grants_changed_since(T0 + timedelta(minutes=1))
    assert mark == T0 + timedelta(minutes=5)

    late = await repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p")  # stamped before `mark`
    grants, next_mark = await repo.grants_changed_since(mark)
    assert late.id in by_id(grants)
    assert next_mark == mark  # the late row is older than the mark: the mark never goes back


async def test_grants_changed_since_with_the_real_clock(db_engine: AsyncEngine) -> None:
    """Microsecond timestamps from datetime.now(): a change right after the mark is picked up on both backends."""
    repo = TenantRepo(db_engine, sync_overlap=timedelta(0))
    tenant, key = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    _, mark = await repo.grants_changed_since(tenant.created_at)
    assert mark == tenant.created_at
    await repo.revoke_key(key.id)
    grants, new_mark = await repo.grants_changed_since(mark)
    assert [(g.key_id, g.revoked) for g in grants] == [(key.id, True)]
    assert new_mark > mark


async def test_two_processes_see_each_others_changes(db_url: str) -> None:
    """Two engines stand in for two worker processes sharing the database."""
    engines = [make_engine(db_url), make_engine(db_url)]
    try:
        writer, reader = (TenantRepo(e) for e in engines)
        mark = datetime.now(UTC)
        tenant, key = await writer.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
        grants, mark = await reader.grants_changed_since(mark)
        assert [(g.key_id, g.tenant.id, g.revoked) for g in grants] == [(key.id, tenant.id, False)]
        await writer.revoke_key(key.id)
        grants, _ = await reader.grants_changed_since(mark)
        assert [(g.key_id, g.revoked) for g in grants] == [(key.id, True)]
    finally:
        for e in engines:
            await e.dispose()


async def test_concurrent_writers(repo: TenantRepo) -> None:
    """Many writers at once (pool of connections; on SQLite they queue on busy_timeout instead of failing)."""
    tenant, _ = await repo.create_tenant("acme", key_hash=new_hash(), key_prefix="p")
    keys = await asyncio.gather(*(repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p") for _ in range(30)))
    await asyncio.gather(
        *(repo.revoke_key(k.id) for k in keys[:10]),
        *(repo.update_tenant(tenant.id, rate_limit_rpm=n) for n in range(10)),
        *(repo.create_key(tenant.id, key_hash=new_hash(), key_prefix="p") for _ in range(10)),
    )
    assert len(await repo.load_grants()) == 1 + 30 - 10 + 10

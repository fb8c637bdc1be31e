from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from aigw.errors import Unauthorized
from aigw.store.tenants import KeyGrant, Tenant
from aigw.tenancy import KEY_PREFIX, KeyCache, hash_key, new_key

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def tenant(tid: str = "t1", rpm: int | None = 10, deleted: bool = False) -> Tenant:
    return Tenant(tid, "name", rpm, None, Decimal("5"), NOW, NOW, NOW if deleted else None)


def grant(key: str, kid: str = "k1", t: Tenant | None = None, revoked: bool = False) -> KeyGrant:
    return KeyGrant(key_id=kid, key_hash=hash_key(key), tenant=t or tenant(), revoked=revoked)


def test_new_keys_are_random_and_well_formed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith(KEY_PREFIX) and len(k) == len(KEY_PREFIX) + 43 for k in keys)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "gw-sk-x"])
def test_malformed_or_missing_header(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        KeyCache().authenticate(header)


def test_authenticate_and_revoke() -> None:
    cache, key = KeyCache(), new_key()
    cache.apply([grant(key)])
    p = cache.authenticate(f"Bearer {key}")
    assert (p.tenant_id, p.key_id, p.rate_limit_rpm, p.monthly_budget_usd) == ("t1", "k1", 10, Decimal("5"))
    assert cache.authenticate(f"bearer   {key}  ").key_id == "k1"  # scheme is case-insensitive
    cache.revoke(["k1"])
    with pytest.raises(Unauthorized):
        cache.authenticate(f"Bearer {key}")


def test_stale_sync_cannot_resurrect_a_revoked_key() -> None:
    cache, key = KeyCache(), new_key()
    stale = [grant(key)]  # what a sync read just before the revocation committed
    cache.apply(stale)
    cache.revoke(["k1"])
    cache.apply(stale)
    with pytest.raises(Unauthorized):
        cache.authenticate(f"Bearer {key}")


def test_deleted_tenant_keys_stay_out() -> None:
    cache, k1, k2 = KeyCache(), new_key(), new_key()
    cache.apply([grant(k1, "k1"), grant(k2, "k2")])
    cache.delete_tenant("t1", ["k1", "k2"])
    cache.apply([grant(k1, "k1")])
    assert len(cache) == 0
    cache.apply([grant(new_key(), "k3", tenant(deleted=True))])
    assert len(cache) == 0


def test_tenant_update_reaches_every_key() -> None:
    cache, k1, k2 = KeyCache(), new_key(), new_key()
    cache.apply([grant(k1, "k1"), grant(k2, "k2"), grant(new_key(), "k9", tenant("t2"))])
    cache.update_tenant("t1", 99, 1000, None)
    assert cache.authenticate(f"Bearer {k2}").rate_limit_rpm == 99
    assert cache.authenticate(f"Bearer {k1}").rate_limit_tpm == 1000

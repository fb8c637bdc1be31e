"""Issue 8: "a key revoked on one [replica] refused by all within 1 s". Two gateways share PostgreSQL and Redis; their
periodic key sync is set to a minute, so only the pushed notice (Redis pub/sub) can bring a change across in time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aigw.config import parse_settings
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PUSH_BOUND_S = 1.0  # the bound
SLOW_POLL_S = 60.0  # so a pass cannot come from the periodic sync
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def config(oai: FakeOpenAI, database_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "admin_key": ADMIN_KEY,
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_timeout_s": 2.0,
        "key_sync_interval_s": SLOW_POLL_S,
        "usage": {"flush_interval_s": 0.05},
        "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
        "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
    }


def subscribed(gw: RunningGateway, timeout: float = 10.0) -> None:
    notices = gw.services.notices
    assert notices is not None
    deadline = time.monotonic() + timeout
    while not notices.subscribed:
        assert time.monotonic() < deadline, "the key-change subscription did not come up"
        time.sleep(0.01)


@pytest.fixture
def pair(fake_openai: FakeOpenAI, pg_url: str, redis_url: str) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    settings = parse_settings(config(fake_openai, pg_url, redis_url), env={})
    with RunningGateway(settings, migrate=False) as a, RunningGateway(settings, migrate=False) as b:
        subscribed(a)
        subscribed(b)
        yield a, b


def status(gw: RunningGateway, key: str) -> int:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=10) as c:
        return c.post("/v1/chat/completions", json=BODY).status_code


def seconds_until(gw: RunningGateway, key: str, want: int, bound: float) -> float:
    start = time.monotonic()
    while (got := status(gw, key)) != want:
        elapsed = time.monotonic() - start
        assert elapsed < bound, f"still {got} after {elapsed:.2f}s (want {want} within {bound}s)"
    return time.monotonic() - start


def test_new_key_and_revocation_reach_the_other_replica_within_a_second(
    pair: tuple[RunningGateway, RunningGateway],
) -> None:
    a, b = pair
    tenant = a.new_tenant("pushed")
    seconds_until(b, tenant["api_key"], 200, PUSH_BOUND_S)  # created on A: B syncs on the notice
    assert a.admin("DELETE", f"/admin/keys/{tenant['key_id']}").status_code == 200
    assert status(a, tenant["api_key"]) == 401
    seconds_until(b, tenant["api_key"], 401, PUSH_BOUND_S)
    notices = b.services.notices
    assert notices is not None and notices.received >= 2


def test_tenant_deleted_on_one_replica_is_refused_by_the_other(pair: tuple[RunningGateway, RunningGateway]) -> None:
    a, b = pair
    tenant = b.new_tenant("doomed")
    seconds_until(a, tenant["api_key"], 200, PUSH_BOUND_S)
    assert b.admin("DELETE", f"/admin/tenants/{tenant['id']}").status_code == 200
    seconds_until(a, tenant["api_key"], 401, PUSH_BOUND_S)

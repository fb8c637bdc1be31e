"""Issue 8 with real processes: two ``aigw serve`` processes sharing PostgreSQL and Redis, as replicas behind a load
balancer would. A global RPM holds across both, a cache entry made on one is a hit on the other, a key revoked on one
is refused by the other within 1 s, and the usage of both lands in one ledger exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.ledger import pg_request_counts
from tests.support.serve import ADMIN, Served, serving

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

RPM = 10
SENT: list[httpx.Response] = []  # every chat response of the test, for the ledger check


def chat(gw: Served, key: str, content: str, **extra: Any) -> httpx.Response:
    """A chat request, remembered in SENT for the ledger check."""
    r = gw.chat(key, {"model": "gpt", "messages": [{"role": "user", "content": content}], **extra})
    SENT.append(r)
    return r


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[tuple[Served, Served, FakeOpenAI]]:
    with FakeOpenAI() as oai, ExitStack() as stack:
        config = tmp_path / "aigw.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "admin_key": ADMIN,
                    "database_url": pg_url,
                    "redis_url": redis_url,
                    "log_level": "warning",
                    "key_sync_interval_s": 30,  # only the pushed notice can bring a revocation across in time
                    "usage": {"flush_interval_s": 0.1},
                    "cache": {"enabled": True},
                    "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
                    "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
                }
            )
        )
        a = stack.enter_context(serving(tmp_path, "--config", str(config)))
        b = stack.enter_context(serving(tmp_path, "--config", str(config)))
        yield a, b, oai


def until(check: Any, bound_s: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < bound_s, f"{what}: not within {bound_s}s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_two_replica_processes_share_limits_cache_revocations_and_one_ledger(
    replicas: tuple[Served, Served, FakeOpenAI], pg_url: str
) -> None:
    a, b, oai = replicas
    SENT.clear()
    tenant = a.admin("POST", "/admin/tenants", {"name": "replicated", "rate_limit_rpm": RPM}).json()
    key = tenant["api_key"]
    until(lambda: chat(b, key, "known?").status_code == 200, 1.0, "the new key on B (pushed)")
    # A cache entry made through A is a hit on B.
    first = chat(a, key, "cached", temperature=0)
    second = chat(b, key, "cached", temperature=0)
    assert (first.headers["x-aigw-cache"], second.headers["x-aigw-cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]
    # The RPM is global: RPM - 3 more requests pass across both replicas, then both refuse.
    statuses = [chat((a, b)[i % 2], key, f"n{i}").status_code for i in range(RPM)]
    assert statuses.count(200) == RPM - 3 and set(statuses[RPM - 3 :]) == {429}, statuses
    # Revoked on B, refused by A within a second.
    assert b.admin("DELETE", f"/admin/keys/{tenant['key_id']}").status_code == 200
    until(lambda: chat(a, key, "revoked?").status_code == 401, 1.0, "the revocation on A")
    assert len(oai.requests) == 1 + 1 + (RPM - 3)  # known?, the miss, the admitted rest: never a hit or a 429
    # One ledger: every response that passed authentication, exactly once (stopping flushes both).
    assert (a.stop(), b.stop()) == (0, 0)
    rows = pg_request_counts(pg_url, tenant["id"])
    recorded = Counter(r.headers["x-request-id"] for r in SENT if r.status_code != 401)  # 401s have no tenant
    assert rows == recorded, f"ledger {sum(rows.values())} rows, responses {sum(recorded.values())}"

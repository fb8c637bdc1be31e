"""The response cache on Redis (issue 6): entries shared by replicas, their TTL in Redis, and Redis trouble degrading
to an uncached service, never to an error.

Replicas are real gateways on one Redis database (``redis_url``: DB 15, flushed before and after each test) and the
same fake OpenAI server; each has its own SQLite file unless the test needs one tenant seen by both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from aigw.state.cache_redis import RedisCacheStore
from tests.cache.conftest import (
    ALIAS_TTL_S,
    GLOBAL_TTL_S,
    Tenant,
    Tenants,
    cache_config,
    cache_status,
    copy_db,
    det,
    reset_fakes,
    sse,
    start_gateway,
    text_of,
)
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.ledger import wait_for_ledger

PREFIX = b"aigw:cache:"
KEY_SYNC_S = 0.1
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


@pytest.fixture(scope="module")
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def start(oai: FakeOpenAI, database_url: str, redis_url: str) -> RunningGateway:
    # Sharing, not degradation, is under test: a slow moment in this busy process must not count as Redis trouble.
    timeout = 0.25 if redis_url == DEAD_REDIS else 2.0
    config = cache_config(
        oai, database_url, redis_url=redis_url, redis_timeout_s=timeout, key_sync_interval_s=KEY_SYNC_S
    )
    return start_gateway(config)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def entries(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match=PREFIX + b"*"))


@pytest.fixture
def pair(
    oai: FakeOpenAI, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    """Two replicas, each with its own SQLite file (so their tenants differ), sharing the Redis database."""
    reset_fakes(oai)
    a = start(oai, copy_db(sqlite_template, tmp_path_factory, "a"), redis_url)
    try:
        b = start(oai, copy_db(sqlite_template, tmp_path_factory, "b"), redis_url)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()
        reset_fakes(oai)


@pytest.fixture
def twins(oai: FakeOpenAI, sqlite_url: str, redis_url: str) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    """Two replicas sharing one database (one tenant seen by both: created on A, learnt by B's key sync)."""
    reset_fakes(oai)
    a = start(oai, sqlite_url, redis_url)
    try:
        b = start(oai, sqlite_url, redis_url)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()
        reset_fakes(oai)


@pytest.mark.redis
def test_a_miss_on_one_replica_is_a_hit_on_another(
    pair: tuple[RunningGateway, RunningGateway], oai: FakeOpenAI, redis_client: redis.Redis, ask: str
) -> None:
    a, b = pair
    on_a, on_b = Tenants(a), Tenants(b)
    try:
        ta, tb = on_a.new("on-a"), on_b.new("on-b")
        shared = det("gpt-shared", ask)
        miss = ta.chat(shared)
        assert miss.status_code == 200 and cache_status(miss) == "miss", miss.text
        assert len(entries(redis_client)) == 1, "the entry lives in Redis"
        hit = tb.chat(shared)
        assert hit.status_code == 200 and cache_status(hit) == "hit", hit.headers
        assert hit.headers["x-aigw-attempts"] == "0" and hit.headers["x-aigw-cost-usd"] == "0"
        assert hit.json()["choices"] == miss.json()["choices"] and hit.json()["id"] != miss.json()["id"]
        streamed = tb.chat({**shared, "stream": True})
        assert cache_status(streamed) == "hit" and text_of(sse(streamed)) == f"Echo: {ask}"
        assert len(oai.requests) == 1, "one upstream call for the three requests on two replicas"

        cost = wait_for_ledger(a, ta.id, 1)[0]["cost_usd"]
        assert cost > Decimal(0)
        rows = wait_for_ledger(b, tb.id, 2)
        assert [(r["cache"], r["cost_usd"], r["saved_cost_usd"]) for r in rows] == [("hit", 0, cost)] * 2

        # A tenant-scoped entry is not another tenant's, whichever replica serves it.
        own = det("gpt", ask)
        assert cache_status(ta.chat(own)) == "miss"
        assert cache_status(tb.chat(own)) == "miss"
        assert len(oai.requests) == 3 and len(entries(redis_client)) == 3
    finally:
        on_a.close()
        on_b.close()


def wait_for_key(tenants: Tenants, gw: RunningGateway, tenant_id: str, key: str) -> Tenant:
    """The tenant through ``gw``, once its key sync knows the key (polled, bounded)."""
    t = tenants.on(gw, tenant_id, key)
    deadline = time.monotonic() + 5
    while (status := t.http.get("/v1/models").status_code) != 200:
        assert status == 401 and time.monotonic() < deadline, f"replica did not learn the key ({status})"
        time.sleep(KEY_SYNC_S / 2)
    return t


@pytest.mark.redis
def test_a_tenant_entry_is_shared_by_replicas_of_one_database(
    twins: tuple[RunningGateway, RunningGateway], oai: FakeOpenAI, ask: str
) -> None:
    a, b = twins
    tenants = Tenants(a)
    try:
        ta = tenants.new("both")
        tb = wait_for_key(tenants, b, ta.id, ta.key)
        assert cache_status(ta.chat(det("gpt", ask))) == "miss"
        hit = tb.chat(det("gpt", ask))
        assert hit.status_code == 200 and cache_status(hit) == "hit", hit.headers
        # A streamed miss on B (stored before its [DONE]) is a hit on A as soon as B's response has completed.
        streamed = tb.chat({**det("gpt", ask + " streamed"), "stream": True})
        assert cache_status(streamed) == "miss" and sse(streamed)
        plain = ta.chat(det("gpt", ask + " streamed"))
        assert cache_status(plain) == "hit" and plain.json()["choices"][0]["message"]["content"] == text_of(
            sse(streamed)
        )
        assert len(oai.requests) == 2
    finally:
        tenants.close()


@pytest.mark.redis
def test_entry_ttl_in_redis(
    pair: tuple[RunningGateway, RunningGateway], oai: FakeOpenAI, redis_client: redis.Redis, ask: str
) -> None:
    gw = pair[0]
    tenants = Tenants(gw)
    try:
        t = tenants.new()

        def stored(body: dict[str, Any], **headers: str) -> tuple[bytes, int]:
            before = entries(redis_client)
            r = t.chat(body, **headers)
            assert r.status_code == 200 and cache_status(r) in ("miss", "bypass"), r.headers
            (key,) = entries(redis_client) - before
            ttl: int = redis_client.ttl(key)
            return key, ttl

        key, ttl = stored(det("gpt", ask))
        assert GLOBAL_TTL_S - 5 < ttl <= GLOBAL_TTL_S, ttl
        assert 0 < stored(det("gpt-ttl", ask))[1] <= ALIAS_TTL_S
        assert 37 < stored(det("gpt-ttl", ask + " 42"), **{"cache-control": "max-age=42"})[1] <= 42
        assert 3595 < stored(det("gpt", ask + " 1h"), **{"cache-control": "no-cache, max-age=3600"})[1] <= 3600

        # Expiry is Redis's: once the key is gone (as at the end of its TTL), the next request is a miss again.
        assert cache_status(t.chat(det("gpt", ask))) == "hit"
        redis_client.delete(key)
        assert cache_status(t.chat(det("gpt", ask))) == "miss"
        assert redis_client.ttl(key) > GLOBAL_TTL_S - 5, "the entry was written again"

        before = entries(redis_client)
        for headers in ({"cache-control": "no-store"}, {}):
            body = det("gpt", ask + " unstored") if headers else {**det("gpt", ask), "temperature": 0.3}
            r = t.chat(body, **headers)
            assert r.status_code == 200 and cache_status(r) == "bypass"
        assert entries(redis_client) == before, "a bypass writes nothing"
    finally:
        tenants.close()


def test_redis_unreachable_serves_every_request_uncached(
    oai: FakeOpenAI, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory, ask: str
) -> None:
    reset_fakes(oai)
    gw = start(oai, copy_db(sqlite_template, tmp_path_factory, "dead-redis"), DEAD_REDIS)
    tenants = Tenants(gw)
    try:
        t = tenants.new()
        for n, stream in enumerate([False, False, True, True, False], start=1):
            r = t.chat({**det("gpt", ask), "stream": stream})
            assert r.status_code == 200, r.text
            assert cache_status(r) == "miss", r.headers
            if stream:
                assert text_of(sse(r)) == f"Echo: {ask}"
            else:
                assert r.json()["choices"][0]["message"]["content"] == f"Echo: {ask}"
            assert len(oai.requests) == n, "without its store the cache serves nothing: every request goes upstream"
        assert [r["cache"] for r in wait_for_ledger(gw, t.id, 5)] == ["miss"] * 5
        store = gw.services.gateway.cache.store
        assert isinstance(store, RedisCacheStore) and store.skipped_gets == 5, "served despite Redis, not without it"
    finally:
        tenants.close()
        gw.stop()
        reset_fakes(oai)


@pytest.mark.redis
def test_limited_tenant_hits_across_replicas_use_rpm_only(
    twins: tuple[RunningGateway, RunningGateway], oai: FakeOpenAI, ask: str
) -> None:
    """A limited tenant's lookup runs alongside its admission (both on Redis, one round trip): a hit on the other
    replica is served with the shared limits' headers, and once the shared TPM is spent a hit is still served
    (it uses no tokens) while a miss is refused; every admitted request counts against the shared RPM (a refusal
    writes nothing)."""
    a, b = twins
    tenants = Tenants(a)
    try:
        ta = tenants.new("limited", rate_limit_rpm=5, rate_limit_tpm=5)
        tb = wait_for_key(tenants, b, ta.id, ta.key)
        body = det("gpt", ask, max_tokens=100)
        miss = ta.chat(body)  # alone in an empty window: admitted whatever its estimate, and spends the TPM
        assert miss.status_code == 200 and cache_status(miss) == "miss", miss.text
        assert miss.json()["usage"]["total_tokens"] > 5
        hit = tb.chat(body)
        assert hit.status_code == 200 and cache_status(hit) == "hit", hit.text
        assert hit.headers["x-ratelimit-remaining-requests"] == "3", "B sees A's request in the shared window"
        refused = tb.chat(det("gpt", ask + " other", max_tokens=1))
        assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining-tokens"] == "0", refused.text
        assert cache_status(ta.chat(body)) == "hit" and cache_status(tb.chat(body)) == "hit"
        last = tb.chat(body)  # the fifth admitted in the window
        assert cache_status(last) == "hit" and last.headers["x-ratelimit-remaining-requests"] == "0"
        over = ta.chat(body)
        assert over.status_code == 429 and over.headers["x-ratelimit-remaining-requests"] == "0", over.text
        assert len(oai.requests) == 1
    finally:
        tenants.close()

"""Issue 5: "the same limits held globally by two gateway processes sharing Redis (fire concurrent requests at both;
the total admitted equals the limit)", and "Redis unreachable -> fail-open (default)": limits still held per process.

Two real gateways (A and B) share one SQLite file (so one tenant: created through A, picked up by B's key sync) and
one Redis database; concurrent requests are split between them. Per-process limits would admit up to twice the limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from aigw.config import parse_settings
from tests.fakes import faults
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway

pytestmark = pytest.mark.redis

CHAT = "/v1/chat/completions"
MAX_TOKENS = 50
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": MAX_TOKENS}
RPM, FIRED = 20, 50
KEY_SYNC_S = 0.1


def config(oai: FakeOpenAI, database_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "admin_key": ADMIN_KEY,
        "database_url": database_url,
        "redis_url": redis_url,
        # These tests check sharing, not degradation: a slow moment in this busy test process must not count as
        # Redis trouble (which would make a replica decide alone).
        "redis_timeout_s": 2.0 if "127.0.0.1:1/" not in redis_url else 0.25,
        "key_sync_interval_s": KEY_SYNC_S,
        "usage": {"flush_interval_s": 0.05},
        "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
        "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
    }


def start(oai: FakeOpenAI, database_url: str, redis_url: str) -> RunningGateway:
    return RunningGateway(parse_settings(config(oai, database_url, redis_url), env={}), migrate=False).start()


def client(gw: RunningGateway, key: str) -> httpx.Client:
    limits = httpx.Limits(max_connections=FIRED, max_keepalive_connections=FIRED)
    return httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=15, limits=limits)


def wait_for_key(gw: RunningGateway, key: str, timeout: float = 5.0) -> None:
    """Poll an authenticated, unlimited endpoint until ``gw``'s key sync knows ``key`` (bound: key_sync_interval_s)."""
    deadline = time.monotonic() + timeout
    with client(gw, key) as c:
        while (status := c.get("/v1/models").status_code) != 200:
            assert status == 401, status
            assert time.monotonic() < deadline, f"gateway B did not learn the key within {timeout}s"
            time.sleep(KEY_SYNC_S / 2)


def limiter_health(*gws: RunningGateway) -> str:
    """For failure messages: a replica whose Redis calls failed or were slow decided with its own counters."""
    stores = [gw.services.gateway.limits for gw in gws]
    return "degraded calls per replica: " + ", ".join(str(getattr(s, "degraded_calls", "?")) for s in stores)


@pytest.fixture
def pair(fake_openai: FakeOpenAI, sqlite_url: str, redis_url: str) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    a = start(fake_openai, sqlite_url, redis_url)
    try:
        b = start(fake_openai, sqlite_url, redis_url)
        try:
            # Connect to Redis and load the Lua scripts before anything is counted: a slow first call would degrade
            # a replica to local counters for a second.
            warm = a.new_tenant("warm-up", rate_limit_rpm=1000, rate_limit_tpm=1_000_000)["api_key"]
            wait_for_key(b, warm)
            for gw in (a, b):
                with client(gw, warm) as c:
                    assert c.post(CHAT, json=BODY).status_code == 200
            fake_openai.reset()
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def shared_tenant(a: RunningGateway, b: RunningGateway, **limits: int) -> str:
    key: str = a.new_tenant("global", **limits)["api_key"]
    wait_for_key(b, key)
    return key


def fire(a: RunningGateway, b: RunningGateway, key: str, n: int = FIRED) -> list[httpx.Response]:
    """``n`` concurrent chat requests, alternately at A and B."""
    with client(a, key) as ca, client(b, key) as cb, ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: (ca, cb)[i % 2].post(CHAT, json=BODY), range(n)))


def refused_properly(r: httpx.Response) -> bool:
    return (
        r.status_code == 429
        and int(r.headers.get("retry-after", "0")) >= 1
        and r.json()["error"]["type"] == "rate_limit_error"
    )


def test_rpm_is_held_across_two_gateways_sharing_redis(
    pair: tuple[RunningGateway, RunningGateway], fake_openai: FakeOpenAI
) -> None:
    a, b = pair
    key = shared_tenant(a, b, rate_limit_rpm=RPM)
    results = fire(a, b, key)
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == RPM, f"admitted {statuses.count(200)} of {FIRED}; {limiter_health(a, b)}"
    refused = [r for r in results if r.status_code != 200]
    assert len(refused) == FIRED - RPM and all(refused_properly(r) for r in refused), [
        (r.status_code, r.headers.get("retry-after"), r.text) for r in refused if not refused_properly(r)
    ]
    assert len(fake_openai.requests) == RPM, "a refused request never reaches the upstream"
    for r in refused:
        assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]) == (str(RPM), "0")
    # Both replicas keep refusing: the window is full for the tenant, wherever its next request lands.
    with client(a, key) as ca, client(b, key) as cb:
        assert ca.post(CHAT, json=BODY).status_code == 429
        assert cb.post(CHAT, json=BODY).status_code == 429


def test_tpm_is_held_across_two_gateways_sharing_redis(
    pair: tuple[RunningGateway, RunningGateway], fake_openai: FakeOpenAI
) -> None:
    a, b = pair
    # The reservation per request, read from the headers of one admitted request on a roomy tenant.
    probe = shared_tenant(a, b, rate_limit_tpm=1_000_000)
    with client(b, probe) as c:
        r = c.post(CHAT, json=BODY)
    assert r.status_code == 200, r.text
    estimate = 1_000_000 - int(r.headers["x-ratelimit-remaining-tokens"])
    assert estimate >= MAX_TOKENS, r.headers
    admitted = 7
    key = shared_tenant(a, b, rate_limit_tpm=admitted * estimate + estimate // 2)
    # Admitted calls are held upstream so no settlement (refund of the unused estimate) lands mid-burst.
    fake_openai.reset()
    fake_openai.inject(faults.hang(2.0), times=FIRED)
    results = fire(a, b, key, n=30)
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert len(ok) == admitted, f"admitted {len(ok)}, want {admitted}; {limiter_health(a, b)}"
    assert all(refused_properly(r) for r in refused), [(r.status_code, r.text) for r in refused]
    assert len(fake_openai.requests) == admitted


def test_unreachable_redis_fails_open_with_per_process_limits(fake_openai: FakeOpenAI, sqlite_url: str) -> None:
    gw = start(fake_openai, sqlite_url, "redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        key = gw.new_tenant("degraded", rate_limit_rpm=3)["api_key"]
        with client(gw, key) as c, httpx.Client(base_url=gw.url, timeout=10) as anon:
            assert anon.get("/healthz").status_code == 200
            assert anon.get("/readyz").status_code == 503
            served = [c.post(CHAT, json=BODY) for _ in range(3)]
            assert [r.status_code for r in served] == [200] * 3, [r.text for r in served]
            assert [r.headers["x-ratelimit-remaining-requests"] for r in served] == ["2", "1", "0"]
            fourth = c.post(CHAT, json=BODY)
            assert refused_properly(fourth), (fourth.status_code, fourth.headers, fourth.text)
        assert len(fake_openai.requests) == 3
        limits = gw.services.gateway.limits
        assert limits.degraded_calls >= 4 and limits.refused_unavailable == 0, vars(limits)
    finally:
        gw.stop()

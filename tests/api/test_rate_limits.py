"""Per-tenant RPM/TPM limits through the gateway (in-process store; the Redis store has its own suite)."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.openapi import validate

MSG = [{"role": "user", "content": "hello limits"}]


def client_for(gw: RunningGateway, **limits: int) -> httpx.Client:
    t = gw.new_tenant("limited", **limits)
    return httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {t['api_key']}"}, timeout=10)


def chat(c: httpx.Client, **extra: object) -> httpx.Response:
    return c.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG, **extra})


def test_rpm_boundary_headers_and_429(gw: RunningGateway, oai: FakeOpenAI) -> None:
    with client_for(gw, rate_limit_rpm=3) as c:
        remaining = []
        for _ in range(3):
            r = chat(c)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(r.headers["x-ratelimit-remaining-requests"])
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert remaining == ["2", "1", "0"]
        calls = len(oai.requests)
        refused = chat(c)
        assert refused.status_code == 429
        validate("ErrorResponse", refused.json())
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert len(oai.requests) == calls, "a refused request must not reach the upstream"
        # Streams are counted and refused alike.
        assert c.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG, "stream": True}).status_code == 429


def test_limits_are_per_tenant_and_changes_apply_at_once(gw: RunningGateway) -> None:
    t = gw.new_tenant("a", rate_limit_rpm=1)
    with (
        httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {t['api_key']}"}, timeout=10) as a,
        client_for(gw, rate_limit_rpm=1) as b,
    ):
        assert chat(a).status_code == 200 and chat(a).status_code == 429
        assert chat(b).status_code == 200  # another tenant's budget is its own
        assert gw.admin("PATCH", f"/admin/tenants/{t['id']}", {"rate_limit_rpm": 5}).status_code == 200
        r = chat(a)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "5"
        assert gw.admin("PATCH", f"/admin/tenants/{t['id']}", {"rate_limit_rpm": None}).status_code == 200
        r = chat(a)
        assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers


def test_tpm_reserves_then_settles(gw: RunningGateway) -> None:
    with client_for(gw, rate_limit_tpm=60) as c:
        # Alone in an empty window, a request is admitted whatever its estimate ("one request may overshoot").
        first = chat(c, max_tokens=500)
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "60"
        used = first.json()["usage"]["total_tokens"]
        assert used < 60
        # Settled with the real usage (not the 500-token estimate), so a small request still fits...
        gw.flush_usage()
        small = chat(c, max_tokens=5)
        assert small.status_code == 200, small.text
        # ...but one whose reservation would cross the limit is refused before the call.
        big = chat(c, max_tokens=500)
        assert big.status_code == 429 and big.headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize("stream", [False, True])
def test_no_limits_no_headers(stream: bool, http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG, "stream": stream})
    assert r.status_code == 200 and not any(h.startswith("x-ratelimit-") for h in r.headers)

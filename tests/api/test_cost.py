"""Every request priced from the table and the upstream's reported usage: plain, streamed and abandoned."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from aigw.pricing import PriceTable
from aigw.schema.usage import Usage
from tests.api.conftest import TenantKey
from tests.fakes import faults
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.ledger import wait_for_ledger
from tests.support.openapi import validate_sse_stream

PRICES = PriceTable()
MSG = [{"role": "user", "content": "price this request for me please"}]


def usage_of(body: dict[str, Any]) -> Usage:
    u = body["usage"]
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(
        prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"], cached_prompt_tokens=cached
    )


@pytest.mark.parametrize(
    ("model", "kind", "upstream"),
    [("gpt", "openai", "gpt-4o-mini"), ("claude/claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
     ("bedrock", "bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"), ("llama", "ollama", "llama3:8b")],
)  # fmt: skip
def test_non_streamed_cost_header_and_ledger(
    model: str, kind: str, upstream: str, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    r = http.post("/v1/chat/completions", json={"model": model, "messages": MSG})
    assert r.status_code == 200, r.text
    expected = PRICES.cost(kind, upstream, usage_of(r.json()))
    assert expected is not None and (kind == "ollama") == (expected == 0)
    assert Decimal(r.headers["x-aigw-cost-usd"]) == expected
    (row,) = wait_for_ledger(gw, tenant.id, 1)
    assert Decimal(row["cost_usd"]) == expected


def test_streams_are_priced_with_or_without_usage_asked(
    http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    body = {"model": "gpt", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    chunks = validate_sse_stream(http.post("/v1/chat/completions", json=body).content)
    expected = PRICES.cost("openai", "gpt-4o-mini", usage_of(chunks[-1]))
    assert expected is not None and expected > 0
    del body["stream_options"]
    validate_sse_stream(http.post("/v1/chat/completions", json=body).content)
    rows = wait_for_ledger(gw, tenant.id, 2)
    assert [Decimal(r["cost_usd"]) for r in rows] == [expected, expected]
    gw.flush_usage()
    report = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage").json()
    assert Decimal(str(report["cost_usd"])) == 2 * expected


def test_unknown_price_is_null_not_zero(http: httpx.Client, gw: RunningGateway, tenant: TenantKey) -> None:
    r = http.post("/v1/chat/completions", json={"model": "claude", "messages": MSG})  # claude-sonnet-4-6: no price
    assert r.status_code == 200 and "x-aigw-cost-usd" not in r.headers
    (row,) = wait_for_ledger(gw, tenant.id, 1)
    assert row["cost_usd"] is None and row["prompt_tokens"] > 0


def test_abandoned_stream_is_priced_from_usage_seen(
    http: httpx.Client, gw: RunningGateway, tenant: TenantKey, oai: FakeOpenAI
) -> None:
    # Anthropic reports prompt tokens at message_start: a stream that breaks mid-way still costs its prompt.
    with http.stream("POST", "/v1/chat/completions", json={"model": "claude/claude-haiku-4-5", "messages": MSG,
                                                            "stream": True}) as resp:  # fmt: skip
        assert resp.status_code == 200
        next(resp.iter_lines())
    rows = wait_for_ledger(gw, tenant.id, 1)
    assert rows[0]["prompt_tokens"] > 0
    assert rows[0]["cost_usd"] is not None and Decimal(rows[0]["cost_usd"]) > 0
    oai.inject(faults.drop_after(2))  # OpenAI reports usage only at the end: nothing seen, nothing charged
    raw = http.post("/v1/chat/completions", json={"model": "gpt", "messages": MSG, "stream": True})
    assert b"[DONE]" not in raw.content
    rows = sorted(wait_for_ledger(gw, tenant.id, 2), key=lambda r: r["id"])
    assert rows[1]["status"] == 502 and Decimal(rows[1]["cost_usd"]) == 0

"""Monthly budgets: refused (402) once spent, before any upstream call; totals survive a restart (seeded from the
ledger), and changing the budget applies at once."""

from __future__ import annotations

import httpx

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.openapi import validate

MSG = [{"role": "user", "content": "spend a little money please"}]


def chat(c: httpx.Client, model: str = "gpt") -> httpx.Response:
    return c.post("/v1/chat/completions", json={"model": model, "messages": MSG})


def test_budget_refuses_once_spent_and_applies_changes_at_once(gw: RunningGateway, oai: FakeOpenAI) -> None:
    t = gw.new_tenant("thrifty", monthly_budget_usd=0.000001)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {t['api_key']}"}, timeout=10) as c:
        first = chat(c)
        assert first.status_code == 200 and float(first.headers["x-aigw-cost-usd"]) > 0.000001
        calls = len(oai.requests)
        refused = chat(c)
        assert refused.status_code == 402, refused.text
        validate("ErrorResponse", refused.json())
        assert refused.json()["error"]["type"] == "insufficient_quota"
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert len(oai.requests) == calls, "a refused request must not reach the upstream"
        assert gw.admin("PATCH", f"/admin/tenants/{t['id']}", {"monthly_budget_usd": 10}).status_code == 200
        assert chat(c).status_code == 200
        assert gw.admin("PATCH", f"/admin/tenants/{t['id']}", {"monthly_budget_usd": None}).status_code == 200
        assert chat(c).status_code == 200


def test_free_models_never_trip_a_budget(gw: RunningGateway) -> None:
    t = gw.new_tenant("local-only", monthly_budget_usd=0.000001)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {t['api_key']}"}, timeout=10) as c:
        assert all(chat(c, "llama").status_code == 200 for _ in range(3))  # Ollama costs 0


def test_spend_survives_a_restart(gw: RunningGateway) -> None:
    t = gw.new_tenant("restarted", monthly_budget_usd=0.000001)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {t['api_key']}"}, timeout=10) as c:
        assert chat(c).status_code == 200
    gw.flush_usage()
    # A second gateway process on the same database starts with this month's spend read from the ledger.
    with (
        RunningGateway(gw.settings, migrate=False) as other,
        httpx.Client(base_url=other.url, headers={"authorization": f"Bearer {t['api_key']}"}, timeout=10) as c2,
    ):
        assert chat(c2).status_code == 402

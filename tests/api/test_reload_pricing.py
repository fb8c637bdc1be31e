"""A config reload while a request runs (reload.py): the request keeps the prices and providers it started with."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from aigw.config import Settings, parse_settings
from aigw.config.model import PriceOverride
from aigw.pricing import PriceTable
from aigw.routing import Router, Target
from tests.fakes import faults
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.ledger import wait_for_ledger


def _settings(oai: FakeOpenAI, sqlite_url: str) -> Settings:
    """One alias on the fake, priced at $1/$2 per million tokens."""
    config: dict[str, Any] = {
        "admin_key": ADMIN_KEY,
        "database_url": sqlite_url,
        "usage": {"flush_interval_s": 0.05},
        "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
        "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
        "pricing": {"gpt-4o-mini": {"input": 1, "output": 2}},
    }
    return parse_settings(config, env={})


def test_a_stream_running_across_a_reload_is_priced_as_it_started(sqlite_url: str) -> None:
    with FakeOpenAI() as oai, RunningGateway(_settings(oai, sqlite_url), migrate=False) as gw:
        tenant = gw.new_tenant("reload")
        oai.inject(faults.slow(0.1))
        body = {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {tenant['api_key']}"}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))

            async def reload() -> None:  # what reload.py does, on the gateway's loop: providers gone, prices x1000
                gateway = gw.services.gateway
                gateway.reconfigure(
                    Router({"gpt": [Target("oai", "gpt-4o-mini")]}, ["oai"]),
                    {},
                    PriceTable({"gpt-4o-mini": PriceOverride(input=Decimal(1000), output=Decimal(2000))}),
                    {},
                )

            gw.call(reload())
            assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
        (row,) = wait_for_ledger(gw, tenant["id"], 1)
        usage_in, usage_out = row["prompt_tokens"], row["completion_tokens"]
        assert usage_in > 0 and usage_out > 0
        expected = (Decimal(usage_in) * 1 + Decimal(usage_out) * 2) / Decimal(1_000_000)
        assert row["cost_usd"] == expected.quantize(Decimal("1e-9")), "priced at the old table, not null, not x1000"


def test_a_reload_landing_during_admission_does_not_reroute_the_request(sqlite_url: str) -> None:
    """The request resolved its targets before a reload removed their provider, and admission (Redis, the cache)
    was still running when the reload landed: it is served and priced on the routing it started with."""
    with FakeOpenAI() as oai, RunningGateway(_settings(oai, sqlite_url), migrate=False) as gw:
        tenant = gw.new_tenant("reload-admission")
        gateway = gw.services.gateway
        enter = gateway._enter

        async def enter_during_a_reload(*args: Any, **kwargs: Any) -> Any:
            gateway.reconfigure(Router({}, []), {}, PriceTable({}), {})  # every provider and price gone
            return await enter(*args, **kwargs)

        gateway._enter = enter_during_a_reload
        body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {tenant['api_key']}"}
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-aigw-provider"] == "oai"
        (row,) = wait_for_ledger(gw, tenant["id"], 1)
        assert row["cost_usd"] is not None and row["cost_usd"] > 0, "priced at the table it started with"

"""The gateway on PostgreSQL: chat through both provider types with usage landing in the ledger (asyncpg COPY),
revocation, and two gateway instances (replicas) sharing one database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import openai
import pytest
from sqlalchemy.engine import make_url

from aigw.config import parse_settings
from tests.api.conftest import gateway_config
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.databases import run_private
from tests.support.gateway import RunningGateway

pytestmark = pytest.mark.postgres

MODELS = {"gpt": "oai", "llama": "local"}
MSG: list[Any] = [{"role": "user", "content": "hello gateway world"}]
# key_sync_interval_s defaults to 1 s; the contract makes a revocation effective within 1 s on every replica.
# Poll with a generous deadline so a slow CI box does not flake, and report how long it took.
SYNC_DEADLINE_S = 5.0


def start_gateway(oai: FakeOpenAI, olla: FakeOllama, url: str) -> RunningGateway:
    return RunningGateway(parse_settings(gateway_config(oai, olla, url), env={})).start()


@pytest.fixture
def gw_a(fake_openai: FakeOpenAI, fake_ollama: FakeOllama, pg_url: str) -> Iterator[RunningGateway]:
    gw = start_gateway(fake_openai, fake_ollama, pg_url)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def gw_b(fake_openai: FakeOpenAI, fake_ollama: FakeOllama, pg_url: str) -> Iterator[RunningGateway]:
    gw = start_gateway(fake_openai, fake_ollama, pg_url)
    try:
        yield gw
    finally:
        gw.stop()


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def status_of(gw: RunningGateway, key: str) -> int:
    with sdk(gw, key) as c:
        try:
            c.models.list()
        except openai.AuthenticationError:
            return 401
    return 200


def wait_for_status(gw: RunningGateway, key: str, want: int) -> float:
    """Poll ``GET /v1/models`` until it answers ``want``; return the seconds it took."""
    started = time.monotonic()
    while (got := status_of(gw, key)) != want:
        waited = time.monotonic() - started
        assert waited < SYNC_DEADLINE_S, f"still {got} (want {want}) after {waited:.1f}s on the other instance"
        time.sleep(0.05)
    return time.monotonic() - started


def usage(gw: RunningGateway, tenant_id: str) -> dict[str, Any]:
    gw.flush_usage()
    r = gw.admin("GET", f"/admin/tenants/{tenant_id}/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def ledger_rows(url: str, tenant_id: str) -> list[dict[str, Any]]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def read() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT * FROM usage_records WHERE tenant_id = $1 ORDER BY created_at", tenant_id)
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    return run_private(read())


@pytest.mark.parametrize("model", sorted(MODELS))
def test_chat_and_stream_metered_into_postgres(model: str, gw_a: RunningGateway, pg_url: str) -> None:
    tenant = gw_a.new_tenant("pg")
    with sdk(gw_a, tenant["api_key"]) as client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MSG)
        assert raw.headers["x-aigw-provider"] == MODELS[model]
        completion = raw.parse()
        assert completion.choices[0].message.content == "Echo: hello gateway world"
        stream = client.chat.completions.with_raw_response.create(
            model=model, messages=MSG, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello gateway world"
    streamed = chunks[-1].usage
    assert completion.usage is not None and streamed is not None

    report = usage(gw_a, tenant["id"])
    assert report["requests"] == 2
    assert report["prompt_tokens"] == completion.usage.prompt_tokens + streamed.prompt_tokens
    assert report["completion_tokens"] == completion.usage.completion_tokens + streamed.completion_tokens
    assert [m["model"] for m in report["by_model"]] == [model]
    assert report["by_model"][0]["requests"] == 2

    # The rows themselves, as COPY wrote them: every column in its place.
    rows = ledger_rows(pg_url, tenant["id"])
    assert {r["request_id"] for r in rows} == {raw.headers["x-request-id"], stream.headers["x-request-id"]}
    by_id = {r["request_id"]: r for r in rows}
    plain, streamed_row = by_id[raw.headers["x-request-id"]], by_id[stream.headers["x-request-id"]]
    assert (plain["stream"], streamed_row["stream"]) == (False, True)
    for row, used in ((plain, completion.usage), (streamed_row, streamed)):
        assert row["status"] == 200 and row["provider"] == MODELS[model] and row["model"] == model
        assert row["key_id"] == tenant["key_id"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (used.prompt_tokens, used.completion_tokens)
        assert row["created_at"].tzinfo is not None and row["latency_ms"] >= 0


def test_revoked_key_refused_at_once(gw_a: RunningGateway) -> None:
    tenant = gw_a.new_tenant("revoke")
    extra = gw_a.admin("POST", f"/admin/tenants/{tenant['id']}/keys", {})
    assert extra.status_code == 201, extra.text
    key, key_id = extra.json()["api_key"], extra.json()["id"]
    with sdk(gw_a, key) as client:
        assert client.chat.completions.create(model="gpt", messages=MSG).choices
        revoked = gw_a.admin("DELETE", f"/admin/keys/{key_id}")
        assert revoked.status_code in (200, 204), revoked.text
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt", messages=MSG)
    assert status_of(gw_a, tenant["api_key"]) == 200, "revoking one key must not touch the tenant's others"


def test_key_created_on_one_instance_works_on_the_other(gw_a: RunningGateway, gw_b: RunningGateway) -> None:
    tenant = gw_a.new_tenant("replicas")
    assert status_of(gw_a, tenant["api_key"]) == 200  # the writer knows it at once
    wait_for_status(gw_b, tenant["api_key"], 200)
    with sdk(gw_b, tenant["api_key"]) as client:
        assert client.chat.completions.create(model="llama", messages=MSG).choices[0].message.content

    imported = "gw-sk-imported-" + "x" * 40
    r = gw_b.admin("POST", f"/admin/tenants/{tenant['id']}/keys", {"key": imported})
    assert r.status_code == 201, r.text
    wait_for_status(gw_a, imported, 200)  # and the other way round


def test_key_revoked_on_one_instance_is_refused_by_the_other(gw_a: RunningGateway, gw_b: RunningGateway) -> None:
    tenant = gw_a.new_tenant("replicas")
    wait_for_status(gw_b, tenant["api_key"], 200)
    revoked = gw_a.admin("DELETE", f"/admin/keys/{tenant['key_id']}")
    assert revoked.status_code in (200, 204), revoked.text
    assert status_of(gw_a, tenant["api_key"]) == 401
    wait_for_status(gw_b, tenant["api_key"], 401)
    assert status_of(gw_a, tenant["api_key"]) == 401  # and it stays revoked on both
    assert status_of(gw_b, tenant["api_key"]) == 401


def test_usage_from_both_instances_lands_in_one_ledger(gw_a: RunningGateway, gw_b: RunningGateway) -> None:
    tenant = gw_a.new_tenant("ledger")
    wait_for_status(gw_b, tenant["api_key"], 200)
    sent = {"a": 0, "b": 0}
    completion_tokens = 0
    for name, gw, n in (("a", gw_a, 3), ("b", gw_b, 2)):
        with sdk(gw, tenant["api_key"]) as client:
            for i in range(n):
                model = sorted(MODELS)[i % 2]
                reply = client.chat.completions.create(model=model, messages=MSG)
                assert reply.usage is not None
                completion_tokens += reply.usage.completion_tokens
                sent[name] += 1
    gw_b.flush_usage()
    for gw in (gw_a, gw_b):  # either instance reports the shared ledger
        report = usage(gw, tenant["id"])
        assert report["requests"] == sent["a"] + sent["b"] == 5, report
        assert report["completion_tokens"] == completion_tokens
        assert sum(m["requests"] for m in report["by_model"]) == 5

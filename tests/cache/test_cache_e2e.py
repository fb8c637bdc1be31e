"""The response cache end to end (issue 6, spec "Response cache", ADR 0008) on the in-process store: what is cached,
how ``Cache-Control`` steers it, tenant scope, streams (assembled misses, replayed hits read by the official SDK),
broken streams and errors never stored, the ledger and usage report, RPM/TPM/budget admission, and TTLs.

Every "hit" is proven by the fake upstream's request count not moving; where it matters, by the fake answering
differently afterwards (``response_models``) while the hit still returns the stored answer.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.cache.conftest import (
    ALIAS_TTL_S,
    CHAT,
    GLOBAL_TTL_S,
    CacheStack,
    ManualClock,
    Tenant,
    Tenants,
    cache_status,
    det,
    finish_reasons,
    message_calls,
    scrambled,
    sse,
    text_of,
    tool_calls_of,
    usage_chunks,
)
from tests.fakes import faults
from tests.fakes.base import FakeUpstream
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.ledger import wait_for_ledger
from tests.support.openapi import validate

PROVIDERS = ["gpt", "claude", "bedrock"]
PROVIDER_NAME = {"gpt": "oai", "claude": "claude", "bedrock": "aws"}
UPSTREAM_MODEL = {
    "gpt": "gpt-4o-mini",
    "claude": "claude-haiku-4-5",
    "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0",
}
# Upstream frames up to the first content chunks: a fault there breaks the stream after its commit point.
MID_STREAM = {"gpt": 2, "claude": 5, "bedrock": 3}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def calls(fake: FakeUpstream) -> int:
    """Requests the fake received (each test starts from a reset fake and only sends chat requests)."""
    return len(fake.requests)


def stream_body(model: str, text: str, *, usage: bool = False, **extra: Any) -> dict[str, Any]:
    body = det(model, text, stream=True, **extra)
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def without_identity(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def core(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    """The counts every provider reports (a streamed entry keeps the gateway's normalised usage, not the upstream's
    extra detail fields)."""
    details = usage.get("prompt_tokens_details") or {}
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"], details.get("cached_tokens", 0)


def assert_hit(r: httpx.Response, provider: str = "oai") -> None:
    assert r.status_code == 200, r.text
    assert cache_status(r) == "hit", r.headers
    assert r.headers["x-aigw-attempts"] == "0"
    assert r.headers["x-aigw-provider"] == provider


def assert_served(r: httpx.Response, status: str) -> None:
    assert r.status_code == 200, r.text
    assert cache_status(r) == status, r.headers
    assert r.headers["x-aigw-attempts"] == "1"


# -- miss, then hit ----------------------------------------------------------------------------------------------


def test_miss_then_hit_regardless_of_key_order_and_whitespace(oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    body = det("gpt", ask, max_tokens=50)
    miss = tenant.raw(json.dumps(body))
    assert_served(miss, "miss")
    assert Decimal(miss.headers["x-aigw-cost-usd"]) > 0
    validate("CreateChatCompletionResponse", miss.json())
    assert calls(oai) == 1

    # The upstream would now answer differently: a hit must still be the stored answer.
    oai.response_models["gpt-4o-mini"] = "gpt-4o-mini-2099-12-31"
    # Key order and whitespace differ; so do fields that cannot change the answer, and a null field (= absent).
    same = {**body, "user": "end-user-7", "metadata": {"team": "x"}, "service_tier": "default", "seed": None}
    hits = [tenant.raw(scrambled(same)) for _ in range(2)]
    for hit in hits:
        assert_hit(hit)
        assert hit.headers["x-aigw-cost-usd"] == "0"
        validate("CreateChatCompletionResponse", hit.json())
        assert without_identity(hit.json()) == without_identity(miss.json())
        assert hit.json()["model"] == "gpt-4o-mini", "the stored answer, not a new one"
    assert calls(oai) == 1, "a hit must not reach the upstream"
    ids = {miss.json()["id"], *(h.json()["id"] for h in hits)}
    assert len(ids) == 3 and all(i.startswith("chatcmpl-") for i in ids), "every response has its own id"


SHAPING: dict[str, dict[str, Any]] = {
    "messages": {"messages": [{"role": "user", "content": "a different question"}]},
    "system": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "PLACEHOLDER"}]},
    "max_tokens": {"max_tokens": 2},
    "stop": {"stop": ["probe"]},
    "seed": {"seed": 7},
    "response_format": {"response_format": {"type": "json_object"}},
    "tools": {"tools": TOOLS},
    "top_p": {"top_p": 0.5},
    "model_alias": {"model": "gpt-twin"},  # same target, another alias
}


@pytest.mark.parametrize("change", sorted(SHAPING))
def test_anything_that_shapes_the_answer_is_a_miss(change: str, oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    base = det("gpt", ask)
    variant = {**base, **json.loads(json.dumps(SHAPING[change]).replace("PLACEHOLDER", ask))}
    assert_served(tenant.chat(base), "miss")
    assert_served(tenant.chat(variant), "miss")
    assert calls(oai) == 2, f"changing {change} must reach the upstream"
    assert_hit(tenant.chat(variant))  # the variant itself is cached under its own key...
    assert_hit(tenant.chat(base))  # ...and did not replace the original's entry
    assert calls(oai) == 2


NON_DETERMINISTIC: dict[str, dict[str, Any]] = {
    "temperature-absent": {"temperature": None},
    "temperature-0.7": {"temperature": 0.7},
    "temperature-tiny": {"temperature": 0.001},
    "n-2": {"n": 2},
}


@pytest.mark.parametrize("case", sorted(NON_DETERMINISTIC))
def test_non_deterministic_requests_bypass(case: str, oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    body = {k: v for k, v in {**det("gpt", ask), **NON_DETERMINISTIC[case]}.items() if v is not None}
    for stream in (False, True, False):
        r = tenant.chat({**body, "stream": stream})
        assert_served(r, "bypass")
    assert calls(oai) == 3, "a bypass always reaches the upstream"
    assert_served(tenant.chat(det("gpt", ask)), "miss")  # nothing was stored by the bypasses
    assert calls(oai) == 4


def test_alias_with_cache_disabled_bypasses(oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    for _ in range(2):
        assert_served(tenant.chat(det("gpt-off", ask)), "bypass")
    assert calls(oai) == 2


def test_n_1_is_cacheable(oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    assert_served(tenant.chat(det("gpt", ask, n=1)), "miss")
    assert_hit(tenant.chat(det("gpt", ask, n=1)))
    assert calls(oai) == 1


# -- Cache-Control ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["no-store", "No-Store, max-age=60"])
def test_no_store_neither_reads_nor_writes(header: str, oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    body = det("gpt", ask)
    # Not written: a no-store miss leaves nothing behind.
    assert_served(tenant.chat(body, **{"cache-control": header}), "bypass")
    assert_served(tenant.chat(body), "miss")
    assert calls(oai) == 2
    # Not read: with an entry present, no-store still goes upstream (and gets the upstream's new answer)...
    oai.response_models["gpt-4o-mini"] = "gpt-4o-mini-new"
    fresh = tenant.chat(body, **{"cache-control": header})
    assert_served(fresh, "bypass")
    assert fresh.json()["model"] == "gpt-4o-mini-new" and calls(oai) == 3
    # ...and does not replace the entry.
    kept = tenant.chat(body)
    assert_hit(kept)
    assert kept.json()["model"] == "gpt-4o-mini" and calls(oai) == 3


@pytest.mark.parametrize("header", ["no-cache", "max-age=0"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_no_cache_skips_the_read_and_refreshes_the_entry(
    header: str, stream: bool, oai: FakeOpenAI, tenant: Tenant, ask: str
) -> None:
    body = det("gpt", ask, stream=stream)
    assert_served(tenant.chat(body), "miss")
    oai.response_models["gpt-4o-mini"] = "gpt-4o-mini-refreshed"
    refreshed = tenant.chat(body, **{"cache-control": header})
    assert_served(refreshed, "bypass")  # the contract lists no-cache as a bypass; it still writes
    assert calls(oai) == 2, "no-cache must reach the upstream"
    oai.response_models.clear()
    hit = tenant.chat(det("gpt", ask))
    assert_hit(hit)
    assert hit.json()["model"] == "gpt-4o-mini-refreshed", "the entry was replaced by the no-cache answer"
    # With no entry at all, no-cache writes one.
    other = det("gpt", ask + " again")
    assert_served(tenant.chat(other, **{"cache-control": header}), "bypass")
    assert_hit(tenant.chat(other))
    assert calls(oai) == 3


def test_max_age_sets_the_entry_ttl(oai: FakeOpenAI, tenant: Tenant, ask: str, clock: ManualClock) -> None:
    body = det("gpt-ttl", ask)  # max-age overrides the alias's ttl_s too
    assert_served(tenant.chat(body, **{"cache-control": "public, MAX-AGE=100"}), "miss")
    clock.advance(99)
    assert_hit(tenant.chat(body))
    clock.advance(2)
    assert_served(tenant.chat(body), "miss")
    assert calls(oai) == 2


def test_ttl_alias_then_global(oai: FakeOpenAI, tenant: Tenant, ask: str, clock: ManualClock) -> None:
    short, default = det("gpt-ttl", ask), det("gpt", ask)
    assert_served(tenant.chat(short), "miss")
    assert_served(tenant.chat(default), "miss")
    clock.advance(ALIAS_TTL_S - 0.1)
    assert_hit(tenant.chat(short))
    assert_hit(tenant.chat(default))
    clock.advance(0.2)  # past the alias's ttl_s
    assert_served(tenant.chat(short), "miss")
    assert_hit(tenant.chat(default))
    assert calls(oai) == 3
    clock.advance(GLOBAL_TTL_S - ALIAS_TTL_S - 0.2)  # just before the global ttl_s
    assert_hit(tenant.chat(default))
    clock.advance(0.5)
    assert_served(tenant.chat(default), "miss")
    assert calls(oai) == 4


# -- tenants -----------------------------------------------------------------------------------------------------


def test_entries_are_per_tenant_unless_the_alias_is_shared(oai: FakeOpenAI, tenants: Tenants, ask: str) -> None:
    a, b = tenants.new("a"), tenants.new("b")
    body = det("gpt", ask)
    assert_served(a.chat(body), "miss")
    assert_served(b.chat(body), "miss")
    assert calls(oai) == 2, "tenant B must not get tenant A's entry"
    assert_hit(a.chat(body))
    assert_hit(b.chat(body))

    shared = det("gpt-shared", ask)
    first = a.chat(shared)
    assert_served(first, "miss")
    assert calls(oai) == 3
    hit = b.chat(shared)
    assert_hit(hit)
    assert without_identity(hit.json()) == without_identity(first.json())
    assert_hit(tenants.new("c").chat({**shared, "stream": True}))
    assert calls(oai) == 3


# -- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_errors_are_never_cached(status: int, stream: bool, oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    body = det("gpt", ask, stream=stream)
    oai.inject(faults.status(status, "scripted failure"))
    failed = tenant.chat(body)
    assert failed.status_code == (400 if status == 400 else 502), failed.text
    validate("ErrorResponse", failed.json())
    assert cache_status(failed) == "miss", "x-aigw-cache is on error responses too"
    ok = tenant.chat(body)
    assert_served(ok, "miss")
    assert calls(oai) == 2, "the error was not stored"
    assert_hit(tenant.chat(body))
    assert calls(oai) == 2


def test_x_aigw_cache_is_on_every_chat_error(gw: RunningGateway, oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as anon:
        r = anon.post(CHAT, json=det("gpt", ask), headers={"authorization": "Bearer sk-aigw-nope"})
        assert r.status_code == 401 and cache_status(r) == "bypass", (r.status_code, r.headers)
    refusals = {
        "bad-json": tenant.raw(b"{not json"),
        "bad-field": tenant.chat({**det("gpt", ask), "temperature": 7}),
        "unknown-model": tenant.chat(det("no-such-alias", ask)),
    }
    for name, r in refusals.items():
        assert 400 <= r.status_code < 500, (name, r.text)
        assert cache_status(r) == "bypass", (name, r.headers)
    oai.inject(faults.status(500))
    r = tenant.chat({**det("gpt", ask), "temperature": 0.5})
    assert r.status_code == 502 and cache_status(r) == "bypass", r.headers


# -- streams -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
@pytest.mark.parametrize("model", PROVIDERS)
def test_streamed_miss_is_replayed_as_a_stream(
    model: str, include_usage: bool, stack: CacheStack, gw: RunningGateway, tenant: Tenant, ask: str
) -> None:
    fake = stack.fake_for(model)
    body = stream_body(model, ask, usage=include_usage)
    miss = tenant.chat(body)
    missed = sse(miss)
    assert cache_status(miss) == "miss"
    assert calls(fake) == 1

    hit = tenant.chat(body)
    replayed = sse(hit)  # framing and every chunk against the official schema
    assert_hit(hit, PROVIDER_NAME[model])
    assert calls(fake) == 1, "a streamed hit must not reach the upstream"
    assert text_of(replayed) == text_of(missed) == f"Echo: {ask}"
    assert finish_reasons(replayed) == finish_reasons(missed) == ["stop"]
    assert replayed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["model"] for c in replayed} == {c["model"] for c in missed}
    ids = {c["id"] for c in replayed}
    assert len(ids) == 1 and ids.isdisjoint({c["id"] for c in missed}), "one fresh id for the replayed stream"
    if include_usage:
        assert len(usage_chunks(replayed)) == 1 and replayed[-1]["choices"] == []
        assert core(usage_chunks(replayed)[0]) == core(usage_chunks(missed)[0])
        assert all("usage" in c for c in replayed)
    else:
        assert usage_chunks(replayed) == [] and all("usage" not in c for c in replayed)


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_replayed_stream_parses_with_the_official_sdk(
    model: str, stack: CacheStack, gw: RunningGateway, client: openai.OpenAI, ask: str
) -> None:
    fake = stack.fake_for(model)
    messages: list[Any] = [{"role": "user", "content": ask}]
    # A plain (non-streamed) entry serves the streamed requests below.
    plain = client.chat.completions.create(model=model, messages=messages, temperature=0)
    assert calls(fake) == 1 and plain.usage is not None
    expected = plain.choices[0].message.content
    assert expected == f"Echo: {ask}"

    with client.chat.completions.with_streaming_response.create(
        model=model, messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
    ) as resp:
        assert resp.headers["x-aigw-cache"] == "hit" and resp.headers["x-aigw-attempts"] == "0"
        chunks = list(resp.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and usages[0].model_dump() == plain.usage.model_dump()
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != plain.id

    plain_stream = list(client.chat.completions.create(model=model, messages=messages, temperature=0, stream=True))
    assert [c.usage for c in plain_stream if c.usage is not None] == [], "no usage chunk unless asked"
    assert "".join(c.choices[0].delta.content or "" for c in plain_stream if c.choices) == expected

    deltas: list[str] = []
    with client.chat.completions.stream(
        model=model, messages=messages, temperature=0, stream_options={"include_usage": True}
    ) as stream:
        deltas.extend(event.delta for event in stream if event.type == "content.delta")
        final = stream.get_final_completion()
    assert "".join(deltas) == expected
    assert final.choices[0].message.content == expected and final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.model_dump() == plain.usage.model_dump()
    assert calls(fake) == 1, "every streamed request above was a hit"


@pytest.mark.parametrize("model", PROVIDERS)
def test_one_stored_form_serves_both_kinds_of_request(
    model: str, stack: CacheStack, gw: RunningGateway, tenant: Tenant, ask: str
) -> None:
    fake = stack.fake_for(model)
    # A streamed miss (the client did not ask for usage; the gateway did) answers a plain request.
    streamed = sse(tenant.chat(stream_body(model, ask)))
    plain_hit = tenant.chat(det(model, ask))
    assert_hit(plain_hit, PROVIDER_NAME[model])
    body = plain_hit.json()
    validate("CreateChatCompletionResponse", body)  # the assembled completion is a valid ChatCompletion
    assert body["choices"][0]["message"]["content"] == text_of(streamed)
    assert body["choices"][0]["finish_reason"] == "stop"
    miss_row = next(r for r in wait_for_ledger(gw, tenant.id, 2) if r["cache"] == "miss")
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (
        miss_row["prompt_tokens"],
        miss_row["completion_tokens"],
    )
    assert calls(fake) == 1

    # A plain miss answers a streamed request, usage chunk included.
    other = ask + " twice"
    plain = tenant.chat(det(model, other))
    assert_served(plain, "miss")
    replay = tenant.chat(stream_body(model, other, usage=True))
    chunks = sse(replay)
    assert_hit(replay, PROVIDER_NAME[model])
    assert text_of(chunks) == plain.json()["choices"][0]["message"]["content"]
    assert usage_chunks(chunks) == [plain.json()["usage"]]
    assert calls(fake) == 2


@pytest.mark.parametrize("model", PROVIDERS)
def test_tool_call_answers_are_cached(
    model: str, stack: CacheStack, gw: RunningGateway, tenant: Tenant, ask: str
) -> None:
    fake = stack.fake_for(model)
    question = f"weather in Paris {ask}"
    streamed = sse(tenant.chat(stream_body(model, question, tools=TOOLS)))
    original = tool_calls_of(streamed)
    assert len(original) == 1 and original[0][0] and original[0][1] == "get_weather", original
    assert json.loads(original[0][2]) == {"city": question}
    assert finish_reasons(streamed) == ["tool_calls"]

    replay = tenant.chat(stream_body(model, question, tools=TOOLS, usage=True))
    chunks = sse(replay)
    assert_hit(replay, PROVIDER_NAME[model])
    assert tool_calls_of(chunks) == original, "same ids, names and arguments"
    assert finish_reasons(chunks) == ["tool_calls"] and len(usage_chunks(chunks)) == 1

    plain = tenant.chat(det(model, question, tools=TOOLS))
    assert_hit(plain, PROVIDER_NAME[model])
    validate("CreateChatCompletionResponse", plain.json())
    assert message_calls(plain.json()) == original
    assert plain.json()["choices"][0]["message"]["content"] is None
    assert plain.json()["choices"][0]["finish_reason"] == "tool_calls"

    # And the other way round: a plain tool-call answer replayed as a stream.
    other = question + " tomorrow"
    first = tenant.chat(det(model, other, tools=TOOLS))
    assert_served(first, "miss")
    again = tenant.chat(stream_body(model, other, tools=TOOLS))
    replayed = sse(again)
    assert_hit(again, PROVIDER_NAME[model])
    assert tool_calls_of(replayed) == message_calls(first.json())
    assert calls(fake) == 2


def _broken(r: httpx.Response) -> None:
    """A stream that broke after its commit point: chunks, then exactly one error event, never [DONE]."""
    assert r.status_code == 200 and cache_status(r) == "miss", r.headers
    events = r.content.decode().rstrip("\n").split("\n\n")
    assert events[-1] != "data: [DONE]" and "error" in json.loads(events[-1].removeprefix("data: ")), events[-3:]


@pytest.mark.parametrize("fault", ["error_after", "drop_after"])
@pytest.mark.parametrize("model", PROVIDERS)
def test_a_stream_broken_midway_is_not_stored(
    model: str, fault: str, stack: CacheStack, gw: RunningGateway, tenant: Tenant, ask: str
) -> None:
    fake = stack.fake_for(model)
    make = faults.error_after if fault == "error_after" else faults.drop_after
    fake.inject(make(MID_STREAM[model]))
    body = stream_body(model, ask, usage=True)
    _broken(tenant.chat(body))
    assert calls(fake) == 1
    retry = tenant.chat(body)
    chunks = sse(retry)
    assert cache_status(retry) == "miss" and calls(fake) == 2, "the broken stream must not have been stored"
    assert text_of(chunks) == f"Echo: {ask}"
    assert_hit(tenant.chat(body), PROVIDER_NAME[model])  # the complete one was
    assert calls(fake) == 2


def test_a_stream_the_client_abandons_is_not_stored(oai: FakeOpenAI, tenant: Tenant, ask: str) -> None:
    oai.inject(faults.stall_after(MID_STREAM["gpt"]))
    body = stream_body("gpt", ask)
    with tenant.http.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200 and cache_status(r) == "miss"
        next(r.iter_bytes())  # the commit point was passed; then the client leaves
    assert oai.wait_for_disconnects(1), "the gateway cancels the upstream when its client leaves"
    retry = tenant.chat(body)
    sse(retry)
    assert cache_status(retry) == "miss" and calls(oai) == 2


# -- ledger and usage report -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_hits_in_the_ledger_and_the_usage_report(model: str, gw: RunningGateway, tenant: Tenant, ask: str) -> None:
    body = det(model, ask)
    miss = tenant.chat(body)
    assert_served(miss, "miss")
    cost = Decimal(miss.headers["x-aigw-cost-usd"])
    assert cost > 0
    assert_hit(tenant.chat(body), PROVIDER_NAME[model])
    sse(tenant.chat({**body, "stream": True}))
    assert_served(tenant.chat(body, **{"cache-control": "no-store"}), "bypass")

    rows = sorted(wait_for_ledger(gw, tenant.id, 4), key=lambda r: r["created_at"])
    assert [(r["cache"], r["cache_hit"], r["stream"], r["status"]) for r in rows] == [
        ("miss", False, False, 200),
        ("hit", True, False, 200),
        ("hit", True, True, 200),
        ("bypass", False, False, 200),
    ]
    first = rows[0]
    assert first["cost_usd"] == cost and first["saved_cost_usd"] is None and first["prompt_tokens"] > 0
    for hit in rows[1:3]:
        assert hit["cost_usd"] == 0 and hit["saved_cost_usd"] == cost
        assert (hit["prompt_tokens"], hit["completion_tokens"]) == (0, 0)
        assert (hit["provider"], hit["upstream_model"]) == (PROVIDER_NAME[model], UPSTREAM_MODEL[model])
        assert (hit["provider"], hit["upstream_model"]) == (first["provider"], first["upstream_model"])
    assert rows[3]["cost_usd"] == cost and rows[3]["saved_cost_usd"] is None

    r = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["requests"], report["cache_hits"]) == (4, 2)
    assert Decimal(str(report["saved_cost_usd"])) == 2 * cost
    assert Decimal(str(report["cost_usd"])) == 2 * cost  # the miss and the bypass; hits cost nothing
    assert report["prompt_tokens"] == 2 * first["prompt_tokens"]


# -- admission: RPM, TPM, budget ---------------------------------------------------------------------------------


def test_hits_count_against_rpm(gw: RunningGateway, oai: FakeOpenAI, tenants: Tenants, ask: str) -> None:
    t = tenants.new("rpm", rate_limit_rpm=2)
    body = det("gpt", ask)
    assert_served(t.chat(body), "miss")
    hit = t.chat(body)
    assert_hit(hit)
    assert hit.headers["x-ratelimit-remaining-requests"] == "0"
    refused = t.chat(body)  # would be a hit
    assert refused.status_code == 429, refused.text
    validate("ErrorResponse", refused.json())
    assert cache_status(refused) in ("hit", "miss", "bypass")
    assert calls(oai) == 1
    rows = sorted(wait_for_ledger(gw, t.id, 3), key=lambda r: r["created_at"])
    assert [(r["status"], r["cache_hit"]) for r in rows] == [(200, False), (200, True), (429, False)]


def test_hits_do_not_use_tpm(gw: RunningGateway, oai: FakeOpenAI, tenants: Tenants, ask: str) -> None:
    tpm = 5
    t = tenants.new("tpm", rate_limit_tpm=tpm)
    body = det("gpt", ask, max_tokens=100)
    miss = t.chat(body)  # alone in an empty window: admitted whatever its estimate
    assert_served(miss, "miss")
    assert miss.json()["usage"]["total_tokens"] > tpm, "the miss alone spends the tenant's TPM"
    spent = t.chat(det("gpt", ask + " other", max_tokens=1))
    assert spent.status_code == 429 and spent.headers["x-ratelimit-remaining-tokens"] == "0", spent.text
    for _ in range(3):
        assert_hit(t.chat(body))
    assert calls(oai) == 1


def test_a_spent_budget_refuses_hits_too(gw: RunningGateway, oai: FakeOpenAI, tenants: Tenants, ask: str) -> None:
    t = tenants.new("budget", monthly_budget_usd=0.000001)
    body = det("gpt", ask)
    assert_served(t.chat(body), "miss")  # costs more than the whole budget
    deadline = time.monotonic() + 5
    while (r := t.chat(body)).status_code == 200:  # the spend is added just after the response
        assert_hit(r)
        assert time.monotonic() < deadline, "the budget was never seen as spent"
        time.sleep(0.02)
    assert r.status_code == 402, r.text
    assert calls(oai) == 1


@pytest.mark.parametrize("refusal", ["rpm", "budget"])
def test_a_refused_request_is_not_labelled_a_hit(
    refusal: str, gw: RunningGateway, oai: FakeOpenAI, tenants: Tenants, ask: str
) -> None:
    limits: dict[str, Any] = {"rate_limit_rpm": 1} if refusal == "rpm" else {"monthly_budget_usd": 0.000001}
    t = tenants.new(refusal, **limits)
    body = det("gpt", ask)
    assert_served(t.chat(body), "miss")
    deadline = time.monotonic() + 5
    while (refused := t.chat(body)).status_code == 200:  # a budget's spend is added just after the response
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert refused.status_code == (429 if refusal == "rpm" else 402), refused.text
    assert calls(oai) == 1
    row = next(r for r in wait_for_ledger(gw, t.id, 2) if r["status"] == refused.status_code)
    assert (cache_status(refused), row["cache"], row["cache_hit"]) != ("hit", "hit", False)
    assert cache_status(refused) != "hit" and row["cache"] != "hit"

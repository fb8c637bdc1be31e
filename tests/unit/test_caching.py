"""ResponseCache (aigw.caching): which entry a request maps to (scope, TTL, directives) and entries that round-trip
through a real in-process store, with unreadable entries treated as misses."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from aigw.caching import CachePlan, ResponseCache
from aigw.config.model import AliasCache, CacheConfig
from aigw.providers.base import ChatInput, StreamIdentity
from aigw.routing import Target
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.usage import Usage
from aigw.state.cache_memory import MemoryCacheStore

TARGETS = (Target("oai", "gpt-4o"), Target("claude", "claude-sonnet-4-5"))
BODY = {"model": "smart", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {
    "id": "chatcmpl-first",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
}


def chat(raw: dict[str, Any]) -> ChatInput:
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


def cache(**aliases: AliasCache) -> ResponseCache:
    return ResponseCache(MemoryCacheStore(1 << 20), CacheConfig(enabled=True, ttl_s=300), aliases)


def plan(rc: ResponseCache, raw: dict[str, Any] = BODY, tenant: str = "t1", cc: str | None = None) -> CachePlan | None:
    return rc.plan(tenant, str(raw["model"]), TARGETS, chat(raw), cc)


def test_scope_is_the_tenant_unless_the_alias_is_shared() -> None:
    rc = cache()
    a, b = plan(rc, tenant="t1"), plan(rc, tenant="t2")
    assert a is not None and b is not None and a.key != b.key
    shared = cache(smart=AliasCache(shared=True))
    a, b = plan(shared, tenant="t1"), plan(shared, tenant="t2")
    assert a is not None and b is not None and a.key == b.key


def test_targets_are_part_of_the_key() -> None:
    rc = cache()
    one = rc.plan("t1", "smart", TARGETS, chat(BODY), None)
    other = rc.plan("t1", "smart", TARGETS[::-1], chat(BODY), None)
    assert one is not None and other is not None and one.key != other.key


@pytest.mark.parametrize(
    ("alias", "cc", "ttl"),
    [
        (None, None, 300),
        (AliasCache(ttl_s=30), None, 30),
        (AliasCache(ttl_s=30), "max-age=7", 7),
        (None, "max-age=9", 9),
    ],
)
def test_ttl_precedence_request_then_alias_then_global(alias: AliasCache | None, cc: str | None, ttl: int) -> None:
    rc = cache(**({"smart": alias} if alias else {}))
    p = plan(rc, cc=cc)
    assert p is not None and p.ttl_s == ttl and p.mode == "read_write"


def test_directives_and_disabled_alias() -> None:
    rc = cache()
    assert plan(rc, cc="no-store") is None
    refresh = plan(rc, cc="no-cache")
    assert refresh is not None and refresh.mode == "refresh"
    assert plan(rc, {**BODY, "temperature": 0.7}) is None
    assert plan(cache(smart=AliasCache(enabled=False))) is None


async def test_entries_round_trip_with_a_fresh_id_per_response() -> None:
    rc = cache()
    p = plan(rc)
    assert p is not None
    assert await rc.get(p) is None
    usage = Usage(prompt_tokens=5, completion_tokens=2, cached_prompt_tokens=1, cache_write_tokens=3)
    await rc.put(p, provider="oai", upstream_model="gpt-4o", usage=usage, completion=orjson.dumps(COMPLETION))
    hit = await rc.get(p)
    assert hit is not None
    assert (hit.provider, hit.upstream_model, hit.usage) == ("oai", "gpt-4o", usage)
    body = orjson.loads(hit.body(StreamIdentity("chatcmpl-new", 99)))
    assert body == {**COMPLETION, "id": "chatcmpl-new", "created": 99}


async def test_refresh_plans_never_read() -> None:
    rc = cache()
    p, refresh = plan(rc), plan(rc, cc="no-cache")
    assert p is not None and refresh is not None and p.key == refresh.key
    await rc.put(p, provider="oai", upstream_model="gpt-4o", usage=Usage(), completion=orjson.dumps(COMPLETION))
    assert await rc.get(refresh) is None and await rc.get(p) is not None


def entry(completion: Any) -> bytes:
    return orjson.dumps({"v": 1, "provider": "oai", "model": "gpt-4o", "usage": [1, 1, 0, 0], "completion": completion})


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b'{"v": 999, "provider": "oai"}',
        b'{"v": 1, "provider": "oai"}',
        b"[1, 2]",
        entry("not an object"),
        entry({**COMPLETION, "choices": []}),
        entry({**COMPLETION, "model": None}),
        entry({**COMPLETION, "choices": [{"index": 0, "finish_reason": "stop"}]}),
        entry({**COMPLETION, "choices": [{"index": 0, "message": {"tool_calls": [{}]}, "finish_reason": "stop"}]}),
    ],
)
async def test_unreadable_entries_are_misses(raw: bytes) -> None:
    rc = cache()
    p = plan(rc)
    assert p is not None
    await rc.store.set(p.key, raw, 60)
    assert await rc.get(p) is None
    assert rc.counts["unreadable"] == 1


def test_status_counts() -> None:
    rc = cache()
    p = plan(rc)
    refresh = plan(rc, cc="no-cache")
    assert [rc.status(p, None), rc.status(refresh, None), rc.status(None, None)] == ["miss", "bypass", "bypass"]
    assert (rc.counts["miss"], rc.counts["bypass"]) == (1, 2)

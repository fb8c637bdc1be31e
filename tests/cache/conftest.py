"""Response cache end-to-end fixtures (issue 6): one real gateway with ``cache.enabled`` (in-process store) in front
of fake OpenAI, Anthropic and Bedrock servers, plus helpers shared with the Redis suite.

The gateway and fakes live for the module. Each test gets the fakes reset and fresh tenants: entries are scoped by
tenant, so tests cannot see each other's entries (shared aliases get a per-test message instead, see ``ask``).
The in-process store's clock is replaceable (``clock`` fixture): TTLs are tested by moving time, not by sleeping.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aigw.config import parse_settings
from aigw.state.cache_memory import MemoryCacheStore
from tests.api.conftest import ANTHROPIC_KEY, OPENAI_KEY, aws_env
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import FakeUpstream
from tests.fakes.bedrock_fake import FakeBedrock
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.openapi import validate_sse_stream

CHAT = "/v1/chat/completions"
GLOBAL_TTL_S = 300
ALIAS_TTL_S = 2
GPT = {"provider": "oai", "model": "gpt-4o-mini"}

# alias -> (targets, per-alias cache settings)
ALIASES: dict[str, tuple[list[dict[str, str]], dict[str, Any]]] = {
    "gpt": ([GPT], {}),
    "gpt-twin": ([GPT], {}),  # same target as "gpt": only the alias name differs
    "gpt-shared": ([GPT], {"shared": True}),
    "gpt-ttl": ([GPT], {"ttl_s": ALIAS_TTL_S}),
    "gpt-off": ([GPT], {"enabled": False}),
    "claude": ([{"provider": "claude", "model": "claude-haiku-4-5"}], {}),
    "bedrock": ([{"provider": "aws", "model": "anthropic.claude-3-5-sonnet-20240620-v1:0"}], {}),
}


def cache_config(
    oai: FakeOpenAI,
    database_url: str,
    *,
    ant: FakeAnthropic | None = None,
    brk: FakeBedrock | None = None,
    **extra: Any,
) -> dict[str, Any]:
    providers: list[dict[str, Any]] = [
        {"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": OPENAI_KEY}
    ]
    if ant is not None:
        providers.append({"name": "claude", "type": "anthropic", "base_url": ant.url, "api_key": ANTHROPIC_KEY})
    if brk is not None:
        providers.append({"name": "aws", "type": "bedrock", "region": brk.region, "endpoint_url": brk.url})
    names = {p["name"] for p in providers}
    models = [
        {"name": name, "targets": targets, "cache": cache}
        for name, (targets, cache) in ALIASES.items()
        if all(t["provider"] in names for t in targets)
    ]
    return {
        "admin_key": ADMIN_KEY,
        "database_url": database_url,
        "usage": {"flush_interval_s": 0.05},
        "circuit_breaker": {"failure_threshold": 1_000_000},  # faults are injected on purpose: keep circuits closed
        "cache": {"enabled": True, "ttl_s": GLOBAL_TTL_S},
        "providers": providers,
        "models": models,
        **extra,
    }


def start_gateway(config: dict[str, Any]) -> RunningGateway:
    """On a copy of the migrated SQLite template (``migrate=False``): cheaper than migrating per gateway."""
    return RunningGateway(parse_settings(config, env={}), migrate=False).start()


def copy_db(template: Path, tmp_path_factory: pytest.TempPathFactory, name: str = "gw") -> str:
    path = tmp_path_factory.mktemp(name) / "aigw.db"
    path.write_bytes(template.read_bytes())
    return f"sqlite+aiosqlite:///{path}"


@dataclass
class CacheStack:
    gw: RunningGateway
    oai: FakeOpenAI
    ant: FakeAnthropic
    brk: FakeBedrock

    def fake_for(self, model: str) -> FakeUpstream:
        return {"claude": self.ant, "bedrock": self.brk}.get(model, self.oai)


@pytest.fixture(scope="module")
def stack(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheStack]:
    with FakeOpenAI() as oai, FakeAnthropic() as ant, FakeBedrock() as brk, aws_env(brk):
        config = cache_config(oai, copy_db(sqlite_template, tmp_path_factory), ant=ant, brk=brk)
        gw = start_gateway(config)
        try:
            yield CacheStack(gw, oai, ant, brk)
        finally:
            gw.stop()


def reset_fakes(*fakes: FakeUpstream) -> None:
    for fake in fakes:
        fake.reset()
        if isinstance(fake, FakeOpenAI | FakeAnthropic):
            fake.response_models.clear()


@pytest.fixture
def gw(stack: CacheStack) -> Iterator[RunningGateway]:
    reset_fakes(stack.oai, stack.ant, stack.brk)
    yield stack.gw
    reset_fakes(stack.oai, stack.ant, stack.brk)


@pytest.fixture
def oai(stack: CacheStack) -> FakeOpenAI:
    return stack.oai


class ManualClock:
    """The store's clock: real monotonic time plus whatever the test moved it forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(gw: RunningGateway) -> Iterator[ManualClock]:
    """Replace the running gateway's in-process cache clock for the test (restored afterwards)."""
    store = gw.services.gateway.cache.store
    assert isinstance(store, MemoryCacheStore), type(store)
    manual, saved = ManualClock(), store._clock
    store._clock = manual
    try:
        yield manual
    finally:
        store._clock = saved


@dataclass
class Tenant:
    id: str
    key: str
    http: httpx.Client

    def chat(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post(CHAT, json=body, headers=headers)

    def raw(self, content: bytes | str, **headers: str) -> httpx.Response:
        return self.http.post(CHAT, content=content, headers={"content-type": "application/json", **headers})


class Tenants:
    """Creates tenants on a gateway (with their HTTP clients, closed at the end of the test)."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self._clients: list[httpx.Client] = []

    def new(self, name: str = "cache", **limits: Any) -> Tenant:
        t = self.gw.new_tenant(name, **limits)
        return self.on(self.gw, t["id"], t["api_key"])

    def on(self, gw: RunningGateway, tenant_id: str, key: str) -> Tenant:
        """The same tenant through another gateway (a replica sharing the database)."""
        c = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=10)
        self._clients.append(c)
        return Tenant(tenant_id, key, c)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def tenants(gw: RunningGateway) -> Iterator[Tenants]:
    t = Tenants(gw)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def tenant(tenants: Tenants) -> Tenant:
    return tenants.new()


@pytest.fixture
def client(gw: RunningGateway, tenant: Tenant) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key=tenant.key, max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
def ask() -> str:
    """A user message unique to the test, so entries of shared aliases never carry over between tests."""
    return f"cache probe {uuid.uuid4().hex}"


# -- request and response helpers ------------------------------------------------------------------------------


def det(model: str, text: str, **extra: Any) -> dict[str, Any]:
    """A deterministic (cacheable) request."""
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def cache_status(r: httpx.Response) -> str:
    status: str = r.headers.get("x-aigw-cache", "<absent>")
    return status


def sse(r: httpx.Response) -> list[dict[str, Any]]:
    """A 200 stream's chunks, the framing and every chunk validated against the official schema."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    return validate_sse_stream(r.content)


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def tool_calls_of(chunks: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) per streamed tool call, assembled by index."""
    calls: dict[int, list[str]] = {}
    for c in chunks:
        for choice in c["choices"]:
            for tc in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(tc["index"], ["", "", ""])
                call[0] += tc.get("id") or ""
                fn = tc.get("function") or {}
                call[1] += fn.get("name") or ""
                call[2] += fn.get("arguments") or ""
    return [(i, n, a) for i, n, a in (calls[k] for k in sorted(calls))]


def message_calls(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    calls = body["choices"][0]["message"].get("tool_calls") or []
    return [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


def usage_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["usage"] for c in chunks if c.get("usage") is not None]


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"] is not None]


def scrambled(body: dict[str, Any]) -> str:
    """The same JSON with every object's keys in reverse order and lavish whitespace."""

    def rev(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rev(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [rev(x) for x in v]
        return v

    return "\n  " + json.dumps(rev(body), indent=7, separators=(" ,  ", " :   ")) + "\n\n"

"""Resilience end-to-end fixtures: a real gateway in front of fake OpenAI, Anthropic and Ollama servers whose aliases
are fallback chains mixing the three, with a small circuit breaker (threshold 3, cooldown 0.5 s) and a short request
deadline, so every policy of the contract ("Semantics": fallback, circuit breaker) can be driven in a few seconds.

The fakes and the gateway live for the module. Each test gets the fakes reset and a fresh tenant; afterwards every
circuit it opened or dented is healed through the public API (a direct ``provider/model`` request once the cooldown
is over), so breaker state never leaks from one test into the next.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.config import parse_settings
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import FakeUpstream
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "one two three four five six seven eight"}]
OPENAI_KEY = "sk-fake-openai-key"
ANTHROPIC_KEY = "sk-ant-api03-fake-key"

THRESHOLD = 3
COOLDOWN_S = 0.5
REQUEST_TIMEOUT_S = 2.0
FIRST_BYTE_S, SILENCE_S, STREAM_S = 0.3, 0.5, 1.0
SHORT = {"first_byte_timeout_s": FIRST_BYTE_S, "timeout_s": SILENCE_S, "stream_timeout_s": STREAM_S}
UNHEALABLE = ("dead",)  # nothing listens there: its circuits stay as the tests leave them


@dataclass
class Fakes:
    oai: FakeOpenAI
    ant: FakeAnthropic
    olla: FakeOllama

    def reset(self) -> None:
        for fake in self.all():
            fake.reset()

    def all(self) -> tuple[FakeUpstream, ...]:
        return (self.oai, self.ant, self.olla)


# alias -> targets in order, as "provider/model" (a "+N" suffix: N retries on that target). Target keys are kept
# distinct where tests would otherwise share breaker state.
ALIASES: dict[str, list[str]] = {
    "chain": ["oai/gpt-4o-mini", "claude/claude-sonnet-4-6", "local/llama3:8b"],
    "ant-first": ["claude/claude-haiku-4-5", "local/llama3:8b"],
    "retry": ["oai/gpt-retry+2", "local/llama3.2"],
    "short": ["oai-short/gpt-4o-mini", "claude/claude-sonnet-4-6"],
    "short-solo": ["oai-short/gpt-solo"],
    "all-short": ["oai-short/gpt-4o", "claude-short/claude-sonnet-4-6"],
    "refused": ["dead/gpt-refused", "claude/claude-sonnet-4-6"],
    "all-fail": ["dead/gpt-all-fail", "claude/claude-haiku-4-5"],
    # Retries x short timeouts, then a target with the default 60 s timeouts: only the deadline can stop it.
    "deadline": ["oai-short/gpt-deadline+2", "claude/claude-opus-4-7"],
    "guarded": ["oai/gpt-guarded", "local/llama3.2"],
}


def _target(spec: str) -> dict[str, Any]:
    key, _, retries = spec.partition("+")
    provider, _, model = key.partition("/")
    return {"provider": provider, "model": model, "retries": int(retries or 0)}


def gateway_config(f: Fakes, database_url: str, **extra: Any) -> dict[str, Any]:
    oai, ant = {"base_url": f.oai.url + "/v1", "api_key": OPENAI_KEY}, {"base_url": f.ant.url, "api_key": ANTHROPIC_KEY}
    return {
        "admin_key": ADMIN_KEY,
        "database_url": database_url,
        "usage": {"flush_interval_s": 0.05},
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "circuit_breaker": {"failure_threshold": THRESHOLD, "cooldown_s": COOLDOWN_S},
        "providers": [
            {"name": "oai", "type": "openai", **oai},
            {"name": "claude", "type": "anthropic", **ant},
            {"name": "local", "type": "ollama", "base_url": f.olla.url},
            {"name": "oai-short", "type": "openai", **oai, **SHORT},
            {"name": "claude-short", "type": "anthropic", **ant, **SHORT},
            # Nothing listens on port 9 (discard): connection refused.
            {"name": "dead", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": OPENAI_KEY},
        ],
        "models": [{"name": name, "targets": [_target(t) for t in ts]} for name, ts in ALIASES.items()],
        **extra,
    }


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    # Any model name is accepted by the OpenAI and Anthropic fakes, so each concern can have its own circuit.
    with FakeOpenAI(models=None) as oai, FakeAnthropic(models=None) as ant, FakeOllama() as olla:
        yield Fakes(oai, ant, olla)


def new_db(template: Path, tmp_path_factory: pytest.TempPathFactory, name: str = "gw") -> str:
    path = tmp_path_factory.mktemp(name) / "aigw.db"
    shutil.copyfile(template, path)
    return f"sqlite+aiosqlite:///{path}"


def start_gateway(config: dict[str, Any]) -> RunningGateway:
    return RunningGateway(parse_settings(config, env={}), migrate=False).start()


@dataclass
class Stack:
    gw: RunningGateway
    fakes: Fakes
    healer_key: str


def make_stack(fakes: Fakes, template: Path, tmp_path_factory: pytest.TempPathFactory, **extra: Any) -> Iterator[Stack]:
    gw = start_gateway(gateway_config(fakes, new_db(template, tmp_path_factory), **extra))
    try:
        yield Stack(gw, fakes, gw.new_tenant("healer")["api_key"])
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def stack(fakes: Fakes, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(fakes, sqlite_template, tmp_path_factory)


@pytest.fixture
def gw(stack: Stack) -> Iterator[RunningGateway]:
    stack.fakes.reset()
    yield stack.gw
    heal(stack)


@dataclass
class Tenant:
    id: str
    key: str


@pytest.fixture
def tenant(gw: RunningGateway) -> Tenant:
    t = gw.new_tenant("resilience")
    return Tenant(t["id"], t["api_key"])


@pytest.fixture
def http(gw: RunningGateway, tenant: Tenant) -> Iterator[httpx.Client]:
    with client_for(gw, tenant.key) as c:
        yield c


def client_for(gw: RunningGateway, key: str, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=timeout)


# -- reading the gateway -----------------------------------------------------------------------------------------


def body(model: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "stream": stream, **extra}


def circuits(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    """``GET /admin/providers`` keyed by target (``provider/model``)."""
    r = gw.admin("GET", "/admin/providers")
    assert r.status_code == 200, r.text
    return {entry["target"]: entry for entry in r.json()["data"]}


def circuit(gw: RunningGateway, key: str) -> dict[str, Any]:
    entry: dict[str, Any] = circuits(gw)[key]
    return entry


def wait_for_cooldown(gw: RunningGateway, key: str, timeout: float = 5.0) -> None:
    """Poll until the open circuit's cooldown (contract: ``cooldown_s`` after it opened) is over."""
    entry = circuit(gw, key)
    assert entry["state"] == "open", entry
    ready_at = datetime.fromisoformat(entry["opened_at"]).timestamp() + COOLDOWN_S + 0.02
    deadline = time.monotonic() + timeout
    while time.time() < ready_at:
        assert time.monotonic() < deadline, f"{key}: cooldown not over after {timeout}s"
        time.sleep(0.02)


def heal(stack: Stack, timeout: float = 5.0) -> None:
    """Bring every circuit back to closed with no failures counted, through the public API: a successful direct
    request resets a closed target, and (after the cooldown) is the trial that closes an open one."""
    stack.fakes.reset()
    deadline = time.monotonic() + timeout
    with client_for(stack.gw, stack.healer_key) as c:
        while True:
            sick = [
                key
                for key, e in circuits(stack.gw).items()
                if e["provider"] not in UNHEALABLE and (e["state"] != "closed" or e["consecutive_failures"])
            ]
            if not sick:
                break
            assert time.monotonic() < deadline, f"could not heal circuits {sick}: {circuits(stack.gw)}"
            for key in sick:
                c.post(CHAT, json=body(key))
            time.sleep(0.02)
    stack.fakes.reset()


def sse_events(r: httpx.Response) -> list[str]:
    """The data of each SSE event of a 200 stream (framing checked: one ``data:`` line per event)."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    text = r.content.decode()
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for event in text[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, event
        out.append(event[len("data: ") :])
    return out


def broken_stream(r: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A stream that broke after its commit point: chunks, then exactly one error event, never ``[DONE]``."""
    data = sse_events(r)
    assert "[DONE]" not in data, "a broken stream must never look complete"
    parsed = [json.loads(d) for d in data]
    errors = [p for p in parsed if "error" in p]
    assert len(errors) == 1 and parsed[-1] is errors[0], data
    assert parsed[:-1], "chunks reached the client before the failure"
    err: dict[str, Any] = errors[0]["error"]
    assert err["message"] and err["type"], err
    return parsed[:-1], err


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

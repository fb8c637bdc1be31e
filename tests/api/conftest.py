"""End-to-end fixtures: one real gateway (uvicorn, SQLite) in front of a fake OpenAI and a fake Ollama server.

The servers live for the module; each test gets the fakes reset and a fresh tenant, so tests stay independent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aigw.config import parse_settings
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.bedrock_fake import FakeBedrock
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway

OPENAI_KEY = "sk-fake-openai-key"
ANTHROPIC_KEY = "sk-ant-api03-fake-key"


@dataclass
class Stack:
    gw: RunningGateway
    oai: FakeOpenAI
    olla: FakeOllama
    ant: FakeAnthropic
    brk: FakeBedrock


def cloud_providers(ant: FakeAnthropic, brk: FakeBedrock) -> dict[str, list[dict[str, Any]]]:
    """Anthropic and Bedrock providers/aliases, to merge into gateway_config()."""
    return {
        "providers": [
            {"name": "claude", "type": "anthropic", "base_url": ant.url, "api_key": ANTHROPIC_KEY},
            {"name": "aws", "type": "bedrock", "region": brk.region, "endpoint_url": brk.url},
        ],
        "models": [
            {"name": "claude", "targets": [{"provider": "claude", "model": "claude-sonnet-4-6"}]},
            {"name": "bedrock", "targets": [{"provider": "aws", "model": "anthropic.claude-3-5-sonnet-20240620-v1:0"}]},
            {"name": "emb-titan", "targets": [{"provider": "aws", "model": "amazon.titan-embed-text-v2:0"}]},
        ],
    }


@contextmanager
def aws_env(brk: FakeBedrock) -> Iterator[None]:
    """The standard AWS credential chain, pointed at the fake's test credentials (and nothing on this machine)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", brk.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", brk.secret_key)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


def gateway_config(oai: FakeOpenAI, olla: FakeOllama, database_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "admin_key": ADMIN_KEY,
        "database_url": database_url,
        "max_body_bytes": 64 * 1024,
        "usage": {"flush_interval_s": 0.05},
        # These suites break upstreams on purpose, hundreds of times, on one shared gateway: keep circuits closed
        # here (breaker behaviour has its own stacks in tests/resilience).
        "circuit_breaker": {"failure_threshold": 1_000_000},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": oai.url + "/v1", "api_key": OPENAI_KEY},
            {"name": "local", "type": "ollama", "base_url": olla.url},
            # Same fake, short timeouts: for timeout tests.
            {"name": "slow", "type": "openai", "base_url": oai.url + "/v1", "api_key": OPENAI_KEY, "timeout_s": 0.5},
            # Nothing listens on port 9 (discard): connection refused.
            {"name": "dead", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": OPENAI_KEY},
            {"name": "nokey", "type": "openai", "api_key": ""},
        ],
        "models": [
            {"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]},
            {"name": "llama", "targets": [{"provider": "local", "model": "llama3:8b"}]},
            {"name": "emb-oai", "targets": [{"provider": "oai", "model": "text-embedding-3-small"}]},
            {"name": "emb-local", "targets": [{"provider": "local", "model": "nomic-embed-text"}]},
            {"name": "slow-gpt", "targets": [{"provider": "slow", "model": "gpt-4o-mini"}]},
            {"name": "dead-gpt", "targets": [{"provider": "dead", "model": "gpt-4o-mini"}]},
            {"name": "disabled", "targets": [{"provider": "nokey", "model": "gpt-4o-mini"}]},
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("gw") / "aigw.db"
    with FakeOpenAI() as oai, FakeOllama() as olla, FakeAnthropic() as ant, FakeBedrock() as brk, aws_env(brk):
        config = gateway_config(oai, olla, f"sqlite+aiosqlite:///{db}")
        cloud = cloud_providers(ant, brk)
        config["providers"] += cloud["providers"]
        config["models"] += cloud["models"]
        with RunningGateway(parse_settings(config, env={})) as gw:
            yield Stack(gw, oai, olla, ant, brk)


@pytest.fixture
def gw(stack: Stack) -> RunningGateway:
    for fake in (stack.oai, stack.olla, stack.ant, stack.brk):
        fake.reset()
    return stack.gw


@pytest.fixture
def ant(stack: Stack) -> FakeAnthropic:
    return stack.ant


@pytest.fixture
def brk(stack: Stack) -> FakeBedrock:
    return stack.brk


@pytest.fixture
def oai(stack: Stack) -> FakeOpenAI:
    return stack.oai


@pytest.fixture
def olla(stack: Stack) -> FakeOllama:
    return stack.olla


@dataclass
class TenantKey:
    id: str
    key: str
    key_id: str


@pytest.fixture
def tenant(gw: RunningGateway) -> TenantKey:
    t = gw.new_tenant("e2e")
    return TenantKey(t["id"], t["api_key"], t["key_id"])


@pytest.fixture
def client(gw: RunningGateway, tenant: TenantKey) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url, api_key=tenant.key, max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
def aclient(gw: RunningGateway, tenant: TenantKey) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=tenant.key, max_retries=0, timeout=10)


@pytest.fixture
def http(gw: RunningGateway, tenant: TenantKey) -> Iterator[httpx.Client]:
    """Raw HTTP with the tenant's key, for headers, status codes and exact bytes."""
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant.key}"}, timeout=10) as c:
        yield c


REPO = Path(__file__).resolve().parents[2]

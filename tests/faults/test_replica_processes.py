"""Issue 8 with real processes: two ``aigw serve`` processes sharing PostgreSQL and Redis, as replicas behind a load
balancer would. A global RPM holds across both, a cache entry made on one is a hit on the other, a key revoked on one
is refused by the other within 1 s, and the usage of both lands in one ledger exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.databases import run_private
from tests.support.gateway import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ADMIN = "replica-admin-key-0123456789"
AIGW = Path(sys.executable).parent / "aigw"
CHAT = "/v1/chat/completions"
RPM = 10
SENT: list[httpx.Response] = []  # every chat response of the test, for the ledger check


class Replica:
    def __init__(self, config: Path, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(AIGW), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.05)

    def chat(self, key: str, content: str, **extra: Any) -> httpx.Response:
        body = {"model": "gpt", "messages": [{"role": "user", "content": content}], **extra}
        r = httpx.post(self.url + CHAT, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
        SENT.append(r)
        return r

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(method, self.url + path, json=json, headers={"authorization": f"Bearer {ADMIN}"})

    def stop(self) -> int | None:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[tuple[Replica, Replica, FakeOpenAI]]:
    with FakeOpenAI() as oai, ExitStack() as stack:
        config = tmp_path / "aigw.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "admin_key": ADMIN,
                    "database_url": pg_url,
                    "redis_url": redis_url,
                    "log_level": "warning",
                    "key_sync_interval_s": 30,  # only the pushed notice can bring a revocation across in time
                    "usage": {"flush_interval_s": 0.1},
                    "cache": {"enabled": True},
                    "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
                    "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
                }
            )
        )
        a, b = Replica(config, tmp_path, "a"), Replica(config, tmp_path, "b")
        stack.callback(b.stop)
        stack.callback(a.stop)
        yield a, b, oai


def ledger(pg_url: str, tenant_id: str) -> Counter[str]:
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def rows() -> Counter[str]:
        conn = await asyncpg.connect(dsn)
        try:
            got = await conn.fetch("SELECT request_id FROM usage_records WHERE tenant_id = $1", tenant_id)
            return Counter(r["request_id"] for r in got)
        finally:
            await conn.close()

    return run_private(rows())


def until(check: Any, bound_s: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < bound_s, f"{what}: not within {bound_s}s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_two_replica_processes_share_limits_cache_revocations_and_one_ledger(
    replicas: tuple[Replica, Replica, FakeOpenAI], pg_url: str
) -> None:
    a, b, oai = replicas
    SENT.clear()
    tenant = a.admin("POST", "/admin/tenants", {"name": "replicated", "rate_limit_rpm": RPM}).json()
    key = tenant["api_key"]
    until(lambda: b.chat(key, "known?").status_code == 200, 1.0, "the new key on B (pushed)")
    # A cache entry made through A is a hit on B.
    first = a.chat(key, "cached", temperature=0)
    second = b.chat(key, "cached", temperature=0)
    assert (first.headers["x-aigw-cache"], second.headers["x-aigw-cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]
    # The RPM is global: RPM - 3 more requests pass across both replicas, then both refuse.
    statuses = [(a, b)[i % 2].chat(key, f"n{i}").status_code for i in range(RPM)]
    assert statuses.count(200) == RPM - 3 and set(statuses[RPM - 3 :]) == {429}, statuses
    # Revoked on B, refused by A within a second.
    assert b.admin("DELETE", f"/admin/keys/{tenant['key_id']}").status_code == 200
    until(lambda: a.chat(key, "revoked?").status_code == 401, 1.0, "the revocation on A")
    assert len(oai.requests) == 1 + 1 + (RPM - 3)  # known?, the miss, the admitted rest: never a hit or a 429
    # One ledger: every response that passed authentication, exactly once (stopping flushes both).
    assert (a.stop(), b.stop()) == (0, 0)
    rows = ledger(pg_url, tenant["id"])
    recorded = Counter(r.headers["x-request-id"] for r in SENT if r.status_code != 401)  # 401s have no tenant
    assert rows == recorded, f"ledger {sum(rows.values())} rows, responses {sum(recorded.values())}"

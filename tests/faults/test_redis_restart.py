"""Issue 8: "Redis down: limits/breaker degrade to per-process state (fail-open by default), cache skipped, requests
served; recovery when it returns. Redis restarted with data loss: no crash, state rebuilds."

A private ``redis-server`` (no persistence) on a free loopback port, so it can really be killed and restarted without
touching the shared test Redis. Two gateways share it and one SQLite file.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from aigw.config import parse_settings
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway, free_port

pytestmark = pytest.mark.redis

CHAT = "/v1/chat/completions"
RPM = 6


class RedisProcess:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._tmp = tmp
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(cmd, cwd=self._tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.kill()  # no shutdown save, no goodbye to clients: a crash
        self._proc.wait(10)

    def keys(self) -> list[bytes | str]:
        return list(redis.Redis.from_url(self.url, socket_timeout=1).keys("*"))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.skip("!!! redis-server binary not installed: Redis restart test SKIPPED !!!")
    r = RedisProcess(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.kill()


def config(oai: FakeOpenAI, database_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "admin_key": ADMIN_KEY,
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_timeout_s": 0.5,
        "key_sync_interval_s": 0.1,
        "usage": {"flush_interval_s": 0.05},
        "cache": {"enabled": True, "ttl_s": 300},
        "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
        "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
    }


def chat(gw: RunningGateway, key: str, content: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(gw.url + CHAT, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)


def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_redis_crash_and_restart_with_data_loss(
    fake_openai: FakeOpenAI, sqlite_url: str, private_redis: RedisProcess
) -> None:
    settings = parse_settings(config(fake_openai, sqlite_url, private_redis.url), env={})
    with RunningGateway(settings, migrate=False) as a, RunningGateway(settings, migrate=False) as b:
        tenant = a.new_tenant("restart", rate_limit_rpm=RPM)
        key = tenant["api_key"]
        eventually(lambda: chat(b, key, "warm").status_code == 200)  # B knows the key (and Redis is warm)
        # Shared state works: a cache entry made through A is a hit on B; the RPM is global (2 used so far).
        assert chat(a, key, "cached", temperature=0).headers["x-aigw-cache"] == "miss"
        assert chat(b, key, "cached", temperature=0).headers["x-aigw-cache"] == "hit"
        assert private_redis.keys(), "state lives in Redis"

        private_redis.kill()
        # Down: served from per-process state (fail-open), cache skipped, never a 5xx.
        for gw in (a, b):
            r = chat(gw, key, "cached", temperature=0)
            assert r.status_code == 200, r.text
            assert r.headers["x-aigw-cache"] == "miss"
        assert httpx.get(a.url + "/readyz", timeout=5).status_code == 503
        assert httpx.get(a.url + "/healthz", timeout=5).status_code == 200

        private_redis.start()  # same port, empty: every key, counter and loaded script is gone
        assert private_redis.keys() == []
        eventually(lambda: httpx.get(a.url + "/readyz", timeout=5).status_code == 200)
        # Recovery: within the guard's retry interval the gateways use Redis again (scripts reloaded on NOSCRIPT)
        # and the state rebuilds: the entry is stored again on a miss, then hit on the other replica.
        eventually(
            lambda: (
                chat(a, key, "after", temperature=0).headers["x-aigw-cache"] == "miss" and bool(private_redis.keys())
            )
        )
        eventually(lambda: chat(b, key, "after", temperature=0).headers["x-aigw-cache"] == "hit")
        # Limits are global again, counting from the restart: RPM requests in total across both, then 429.
        fresh = a.new_tenant("after-restart", rate_limit_rpm=RPM)["api_key"]
        eventually(lambda: chat(b, fresh, "known?").status_code == 200)  # 1 used
        statuses = [chat((a, b)[i % 2], fresh, f"n{i}").status_code for i in range(RPM + 2)]
        assert statuses.count(200) == RPM - 1 and statuses[-1] == 429, statuses
        for gw in (a, b):  # every store is back on Redis, none left skipping it
            stores = (gw.services.gateway.breaker, gw.services.gateway.limits, gw.services.gateway.cache.store)
            assert [s.degraded for s in stores] == [False, False, False]

"""Issue 8's soak: mixed traffic (streams, plain requests, cache hits, 429s, fallbacks) against a real ``aigw serve``
process, its RSS sampled throughout. Checked: no growth trend in RSS, no growth in open file descriptors (sockets),
every request the clients saw recorded in the ledger exactly once.

The suite runs it for ``AIGW_SOAK_S`` seconds (default 20); ``make soak`` runs the issue's 10 minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.serve import serving

DURATION_S = float(os.environ.get("AIGW_SOAK_S", "20"))
CONCURRENCY = 16
ADMIN = "soak-admin-key-0123456789"
RSS_GROWTH_LIMIT_MB = 8.0  # last third vs middle third of the run (the first third is warm-up)


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def write_config(path: Path, db: Path, oai: FakeOpenAI) -> None:
    config = {
        "admin_key": ADMIN,
        "database_url": f"sqlite+aiosqlite:///{db}",
        "log_level": "warning",
        "usage": {"flush_interval_s": 0.2},
        "cache": {"enabled": True, "ttl_s": 600, "max_bytes": 4 * 1024 * 1024},
        "circuit_breaker": {"failure_threshold": 1_000_000},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key},
            {"name": "dead", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-dead"},
        ],
        "models": [
            {"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]},
            {
                "name": "fallback",
                "targets": [{"provider": "dead", "model": "gpt-4o-mini"}, {"provider": "oai", "model": "gpt-4o-mini"}],
            },
        ],
        "pricing": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}},
    }
    path.write_text(yaml.safe_dump(config))


async def traffic(url: str, keys: dict[str, str], stop_at: float, seen: Counter[str], kinds: Counter[str]) -> None:
    rng = random.Random()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < stop_at:
            kind = rng.choice(["plain", "stream", "cached", "cached-stream", "limited", "fallback"])
            key = keys["limited" if kind == "limited" else "main"]
            body: dict[str, Any] = {
                "model": "fallback" if kind == "fallback" else "gpt",
                "messages": [
                    {"role": "user", "content": f"q{rng.randrange(20) if 'cached' in kind else rng.random()}"}
                ],
            }
            if "cached" in kind:
                body["temperature"] = 0
            headers = {"authorization": f"Bearer {key}"}
            if kind in ("stream", "cached-stream"):
                body["stream"] = True
                async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                    lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                    assert r.status_code == 200 and lines[-1] == "data: [DONE]", (r.status_code, lines[-2:])
            else:
                r = await client.post("/v1/chat/completions", json=body, headers=headers)
                assert r.status_code in ((200, 429) if kind == "limited" else (200,)), (kind, r.status_code, r.text)
            seen[r.headers["x-request-id"]] += 1
            kinds[f"{kind}:{r.status_code}:{r.headers.get('x-aigw-cache')}"] += 1


def test_soak_mixed_traffic(tmp_path: Path) -> None:
    with FakeOpenAI() as oai:
        cfg, db = tmp_path / "soak.yaml", tmp_path / "soak.db"
        write_config(cfg, db, oai)
        with serving(tmp_path, "--config", str(cfg), admin_key=ADMIN) as gw:
            keys = {
                "main": gw.admin("POST", "/admin/tenants", {"name": "soak"}).json()["api_key"],
                "limited": gw.admin("POST", "/admin/tenants", {"name": "limited", "rate_limit_rpm": 30}).json()[
                    "api_key"
                ],
            }
            pid = gw.proc.pid
            seen: Counter[str] = Counter()
            kinds: Counter[str] = Counter()
            samples: list[tuple[float, float, int]] = []
            start = time.monotonic()
            stop_at = start + DURATION_S

            async def run() -> None:
                workers = [asyncio.create_task(traffic(gw.url, keys, stop_at, seen, kinds)) for _ in range(CONCURRENCY)]
                while not all(w.done() for w in workers):
                    samples.append((time.monotonic() - start, proc_rss_mb(pid), open_fds(pid)))
                    await asyncio.sleep(0.5)
                await asyncio.gather(*workers)

            asyncio.run(run())
            time.sleep(0.1)
            fds_after = open_fds(pid)
            assert gw.stop(timeout=30) == 0  # SIGTERM: drains, flushes the ledger, exits 0

    # Every mix was exercised: hits, 429s, fallbacks, streams.
    assert any(k.startswith("cached") and k.endswith(":hit") for k in kinds), kinds
    assert any(":429:" in k for k in kinds) and any(k.startswith("fallback:200") for k in kinds), kinds
    # Usage: exactly one row per response the clients saw, none missing, none extra.
    with sqlite3.connect(db) as conn:
        rows = Counter(r[0] for r in conn.execute("SELECT request_id FROM usage_records"))
    assert rows == seen, f"{len(set(seen) - set(rows))} missing, {len(set(rows) - set(seen))} extra"
    # Memory: no growth trend once warm (compare the last third of the run with the middle third).
    third = DURATION_S / 3
    middle = [rss for t, rss, _ in samples if third <= t < 2 * third]
    last = [rss for t, rss, _ in samples if t >= 2 * third]
    growth = statistics.mean(last) - statistics.mean(middle)
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.1f} MB: {samples[:: max(1, len(samples) // 20)]}"
    # Connections: descriptors do not pile up (keep-alive pools are bounded).
    fds = [n for t, _, n in samples if t >= third]
    assert fds_after <= max(fds) and max(fds) - min(fds) < 3 * CONCURRENCY, fds
    print(
        f"\nsoak {DURATION_S:.0f}s: {sum(seen.values())} requests, RSS {samples[0][1]:.0f}->{samples[-1][1]:.0f} MB "
        f"(growth last vs middle third {growth:+.1f} MB), fds {min(fds)}-{max(fds)}; {dict(kinds)}"
    )

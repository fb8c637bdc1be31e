"""Circuit state shared across replicas through Redis (contract: "State is shared across replicas when Redis is
configured"; issue 4: atomic Lua, and a Redis failure degrades to local state rather than failing requests).

Two real gateways (A and B: separate SQLite files, the same Redis database and the same fakes) play two replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakes import faults
from tests.resilience.conftest import (
    CHAT,
    THRESHOLD,
    Fakes,
    body,
    circuit,
    client_for,
    gateway_config,
    new_db,
    start_gateway,
    wait_for_cooldown,
)
from tests.support.gateway import RunningGateway

pytestmark = pytest.mark.redis

KEY = "oai/gpt-guarded"  # alias "guarded": [oai/gpt-guarded, local/llama3.2]
CONCURRENT = 20


@dataclass
class Replica:
    gw: RunningGateway
    http: httpx.Client

    def chat(self, stream: bool = False) -> httpx.Response:
        return self.http.post(CHAT, json=body("guarded", stream=stream))


@pytest.fixture
def replicas(
    fakes: Fakes, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[Replica, Replica]]:
    fakes.reset()
    gateways = [
        start_gateway(
            gateway_config(
                fakes, new_db(sqlite_template, tmp_path_factory, name), redis_url=redis_url, redis_timeout_s=2.0
            )
        )
        for name in ("a", "b")
    ]
    clients = [client_for(gw, gw.new_tenant("replica")["api_key"]) for gw in gateways]
    for c in clients:  # connect to Redis and load the scripts before anything is timed
        assert c.post(CHAT, json=body("chain")).status_code == 200
    fakes.reset()
    try:
        yield Replica(gateways[0], clients[0]), Replica(gateways[1], clients[1])
    finally:
        for c in clients:
            c.close()
        for gw in gateways:
            gw.stop()


def redis_health(*replicas: Replica) -> str:
    """For failure messages: a replica whose Redis calls failed or were slow (> 0.25 s) used local state instead."""
    stores = [r.gw.services.gateway.breaker for r in replicas]
    return "redis errors per replica: " + ", ".join(str(getattr(s, "redis_errors", "?")) for s in stores)


def served_by(r: httpx.Response, provider: str, attempts: int) -> None:
    assert r.status_code == 200, r.text
    assert (r.headers["x-aigw-provider"], r.headers["x-aigw-attempts"]) == (provider, str(attempts))


def open_through(replica: Replica, fakes: Fakes) -> None:
    fakes.oai.inject(faults.status(500, "down for everyone"), times=THRESHOLD)
    for _ in range(THRESHOLD):
        served_by(replica.chat(), "local", attempts=2)
    assert len(fakes.oai.requests) == THRESHOLD


def test_failures_through_one_replica_open_the_target_for_the_other(
    replicas: tuple[Replica, Replica], fakes: Fakes
) -> None:
    a, b = replicas
    open_through(a, fakes)
    seen_by_b = circuit(b.gw, KEY)
    assert (seen_by_b["state"], seen_by_b["consecutive_failures"]) == ("open", THRESHOLD), redis_health(a, b)
    assert "down for everyone" in seen_by_b["last_error"] and seen_by_b["opened_at"]
    for stream in (False, True, False):
        served_by(b.chat(stream), "local", attempts=1)
    served_by(a.chat(), "local", attempts=1)
    assert len(fakes.oai.requests) == THRESHOLD, "no replica calls an open target"


def test_half_open_admits_one_trial_across_replicas(replicas: tuple[Replica, Replica], fakes: Fakes) -> None:
    a, b = replicas
    open_through(b, fakes)
    wait_for_cooldown(a.gw, KEY)
    fakes.oai.inject(faults.hang(1.6))  # the trial stays in flight while the others arrive (under the 2 s deadline)
    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit((a, b)[i % 2].chat) for i in range(CONCURRENT)]
        pending = as_completed(futures, timeout=10)
        skipped = [next(pending).result() for _ in range(CONCURRENT - 1)]
        seen = [(q.status, q.done.is_set()) for q in fakes.oai.requests]
        trial = next(pending).result()
    trial_in_flight = len(seen) == THRESHOLD + 1 and not seen[-1][1]
    assert trial_in_flight, (
        f"the others finished while the trial was in flight; target 1 saw {seen}; {redis_health(a, b)}"
    )
    for r in skipped:
        served_by(r, "local", attempts=1)
    served_by(trial, "oai", attempts=1)
    assert len(fakes.oai.requests) == THRESHOLD + 1, "exactly one trial across both replicas"
    for replica in (a, b):
        entry = circuit(replica.gw, KEY)
        assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0), redis_health(a, b)
        served_by(replica.chat(), "oai", attempts=1)


def test_trial_failure_on_one_replica_reopens_for_both(replicas: tuple[Replica, Replica], fakes: Fakes) -> None:
    a, b = replicas
    open_through(a, fakes)
    first_opened = circuit(b.gw, KEY)["opened_at"]
    wait_for_cooldown(b.gw, KEY)
    fakes.oai.inject(faults.status(503, "still down"))
    served_by(b.chat(), "local", attempts=2)
    entry = circuit(a.gw, KEY)
    assert entry["state"] == "open" and entry["opened_at"] > first_opened, (entry, redis_health(a, b))
    served_by(a.chat(), "local", attempts=1)
    assert len(fakes.oai.requests) == THRESHOLD + 1


def test_unreachable_redis_degrades_to_local_state(
    fakes: Fakes, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fakes.reset()
    config = gateway_config(fakes, new_db(sqlite_template, tmp_path_factory), redis_url="redis://127.0.0.1:1/0")
    gw = start_gateway(config)
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as anon:
            assert anon.get("/healthz").status_code == 200
            ready = anon.get("/readyz")
            assert ready.status_code == 503, ready.text
        with client_for(gw, gw.new_tenant("degraded")["api_key"]) as http:
            served_by(http.post(CHAT, json=body("chain")), "oai", attempts=1)
            # The breaker still works, on this replica's own state.
            fakes.oai.inject(faults.status(500), times=THRESHOLD)
            for _ in range(THRESHOLD):
                served_by(http.post(CHAT, json=body("guarded")), "local", attempts=2)
            assert circuit(gw, KEY)["state"] == "open"
            served_by(http.post(CHAT, json=body("guarded")), "local", attempts=1)
        assert len(fakes.oai.requests) == 1 + THRESHOLD
    finally:
        gw.stop()

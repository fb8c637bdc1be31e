"""Issue 5, "Ledger: kill the database mid-load (stop PostgreSQL, keep sending requests, start it again): no record
lost". A real gateway on PostgreSQL in front of a fake OpenAI; the server is stopped while requests keep coming.

While the database is down: requests are still served (authentication from the key cache: never a 401, never a
500), ``/readyz`` says 503 and ``/healthz`` 200, and the recorder keeps the records in memory. Once the server is back,
the recorder's own retry (back-off capped at 30 s in ``aigw.metering``) writes them: the ledger then holds exactly one
row per ``x-request-id`` the clients saw, none lost, none duplicated.

CAUTION: this STOPS THE SHARED POSTGRESQL SERVER (the local cluster behind ``AIGW_TEST_PG_URL``) for a few seconds.
It is marked ``stops_postgres`` (tests/faults/conftest.py runs it last) and restarts the server in a ``finally``,
waiting for ``pg_isready``, so the machine is left as found even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.engine import make_url

from aigw.config import parse_settings
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.ledger import pg_request_counts

pytestmark = pytest.mark.postgres

BEFORE, DURING, AFTER = 10, 30, 5  # requests sent before the outage, during it, and once the server is back
BACKOFF_CAP_S = 30.0  # aigw.metering.UsageRecorder: min(max(backoff * 2, 0.5), 30.0)
RECOVERY_DEADLINE_S = BACKOFF_CAP_S + 15.0
PG_READY_DEADLINE_S = 30.0
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "count me once"}]}


@dataclass(frozen=True)
class Cluster:
    version: str
    name: str
    port: int

    def ctl(self, action: str) -> None:
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}"

    def is_ready(self) -> bool:
        cmd = ["pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"]
        return subprocess.run(cmd, capture_output=True, timeout=10, check=False).returncode == 0

    def start_and_wait(self) -> None:
        if not self.is_ready():
            self.ctl("start")
        wait_until(self.is_ready, PG_READY_DEADLINE_S, "PostgreSQL did not answer pg_isready after start")


def local_cluster(pg_url: str) -> Cluster:
    """The local cluster serving ``pg_url``; skips (loudly) when this machine cannot stop it."""
    url = make_url(pg_url)
    port = url.port or 5432
    why = None
    if url.host not in ("127.0.0.1", "localhost", "::1"):
        why = f"the test PostgreSQL ({url.host}) is not on this machine"
    elif os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        why = "stopping PostgreSQL needs root and pg_ctlcluster/pg_lsclusters (postgresql-common)"
    else:
        listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=False).stdout
        for line in listing.splitlines():
            version, name, cluster_port, *_ = line.split()
            if int(cluster_port) == port:
                return Cluster(version, name, port)
        why = f"no local cluster listens on port {port} (pg_lsclusters: {listing.strip()!r})"
    pytest.skip(f"!!! ledger outage test SKIPPED: cannot stop PostgreSQL here: {why} !!!")


def wait_until(cond: Callable[[], bool], timeout: float, message: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(message() if callable(message) else message)
        time.sleep(0.05)


@pytest.fixture
def cluster(pg_url: str) -> Iterator[Cluster]:
    c = local_cluster(pg_url)
    assert c.is_ready(), "PostgreSQL should be up before the test"
    try:
        yield c
    finally:  # whatever happened: leave the shared server running
        c.start_and_wait()


@pytest.fixture
def gw(pg_url: str) -> Iterator[RunningGateway]:
    with FakeOpenAI() as oai:
        config = {
            "admin_key": ADMIN_KEY,
            "database_url": pg_url,
            "key_sync_interval_s": 0.2,  # the sync fails (and must not evict keys) many times during the outage
            "usage": {"flush_interval_s": 0.05},
            "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
            "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
        }
        with RunningGateway(parse_settings(config, env={}), migrate=False) as gateway:
            yield gateway


@pytest.mark.stops_postgres  # see tests/faults/conftest.py: moved to the end of the session
def test_no_usage_record_lost_when_postgres_stops_mid_load(cluster: Cluster, gw: RunningGateway, pg_url: str) -> None:
    # ``cluster`` before ``gw``: the gateway stops first, then the server is (re)started whatever happened.
    tenant = gw.new_tenant("outage")
    recorder = gw.services.recorder
    sent: list[str] = []

    def send(http: httpx.Client, n: int, phase: str) -> None:
        for i in range(n):
            r = http.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200, f"{phase} request {i}: {r.status_code} {r.text}"
            sent.append(r.headers["x-request-id"])

    with (
        httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant['api_key']}"}, timeout=10) as http,
        httpx.Client(base_url=gw.url, timeout=10) as anon,
    ):
        send(http, BEFORE, "before the outage")
        wait_until(
            lambda: len(pg_request_counts(pg_url, tenant["id"])) == BEFORE, 5.0, "the first records were never written"
        )
        failures_before = recorder.failures

        cluster.ctl("stop")
        try:
            assert not cluster.is_ready(), "pg_ctlcluster stop returned but the server still answers"
            send(http, DURING // 2, "during the outage")
            # The recorder really met the outage (and its back-off grew) while the records wait in memory.
            wait_until(lambda: recorder.failures >= failures_before + 2, 5.0, "the recorder never tried to write")
            send(http, DURING - DURING // 2, "during the outage")
            assert recorder.pending >= DURING, f"records should wait in memory: {recorder.pending} pending"
            assert anon.get("/healthz").status_code == 200
            ready = anon.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"].startswith("unavailable"), ready.text
            # Admin writes need the database: a clear 503, never a 500 or a hang, and the server stays up.
            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            refused = anon.post("/admin/tenants", json={"name": "during-outage"}, headers=admin)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert "database" in error["message"].lower() and error["type"], error
        finally:
            cluster.start_and_wait()

        send(http, AFTER, "after the outage")
        want = Counter(sent)
        assert len(want) == BEFORE + DURING + AFTER, "x-request-ids must be unique"

        def written() -> bool:
            return set(pg_request_counts(pg_url, tenant["id"])) >= set(want)

        def progress() -> str:
            got = pg_request_counts(pg_url, tenant["id"])
            return (
                f"after {RECOVERY_DEADLINE_S}s: {len(set(want) - set(got))} of {len(want)} records missing; "
                f"recorder pending={recorder.pending} failures={recorder.failures} dropped={recorder.dropped}"
            )

        # No flush() here: it would wake the recorder early, and the point is that it recovers on its own.
        wait_until(written, RECOVERY_DEADLINE_S, progress)
        wait_until(lambda: anon.get("/readyz").status_code == 200, 10.0, "/readyz stayed 503 with the database back")
        gw.flush_usage()  # settle anything still in flight before the exact comparison
        assert pg_request_counts(pg_url, tenant["id"]) == want, "every request exactly once in the ledger"
        assert (recorder.dropped, recorder.pending) == (0, 0)

"""Issue 9: "two gateway processes never double-publish a batch", with real processes: two ``aigw serve`` replicas on
one PostgreSQL publish to one SQS queue (moto); every request's event arrives exactly once, not even duplicated
before deduplication, and the events match the ledger."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.events.helpers import FAST, QueueReader
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.ledger import pg_request_counts
from tests.support.moto import REGION, Moto
from tests.support.serve import ADMIN, serving

pytestmark = pytest.mark.postgres

REQUESTS = 60


def hello(content: str) -> dict[str, object]:
    return {"model": "gpt", "messages": [{"role": "user", "content": content}]}


def test_two_replicas_publish_every_event_once(moto_server: Moto, pg_url: str, tmp_path: Path) -> None:
    queue = moto_server.queue()
    with FakeOpenAI() as oai:
        config = tmp_path / "aigw.yaml"
        sink = {"type": "sqs", "name": "usage", "queue_url": queue, "region": REGION}
        config.write_text(
            yaml.safe_dump(
                {
                    "admin_key": ADMIN,
                    "database_url": pg_url,
                    "log_level": "warning",
                    "usage": {"flush_interval_s": 0.05},
                    "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
                    "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
                    "events": [{**sink, "endpoint_url": moto_server.endpoint_url, **FAST}],
                }
            )
        )
        with serving(tmp_path, "--config", str(config)) as a, serving(tmp_path, "--config", str(config)) as b:
            tenant = a.admin("POST", "/admin/tenants", {"name": "published"}).json()
            key = tenant["api_key"]
            deadline = time.monotonic() + 5
            while b.chat(key, hello("known?")).status_code != 200:  # B learns the key within its 1 s sync
                assert time.monotonic() < deadline, "B never learned the key"
            for i in range(REQUESTS):
                assert (a, b)[i % 2].chat(key, hello(f"n{i}")).status_code == 200
            reader = QueueReader(moto_server, queue)
            messages = asyncio.run(reader.read_until(REQUESTS + 1, timeout=30))
            assert (b.stop(), a.stop()) == (0, 0)
    events = reader.events()
    counts = Counter(e["request_id"] for e in events)
    assert max(counts.values()) == 1, "an event was published twice"
    rows = pg_request_counts(pg_url, tenant["id"])
    assert Counter(counts) == rows, "one event per ledger row"
    assert len(messages) == REQUESTS + 1

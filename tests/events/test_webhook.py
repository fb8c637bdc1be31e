"""Webhook sink against a real local server: signed batches, retries until it recovers, isolation from a dead sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.events import EventService
from aigw.events.outbox import OutboxRow
from aigw.events.webhook import SIGNATURE_HEADER, batch_body, sign
from aigw.store.db import make_engine
from aigw.store.usage import UsageRepo
from tests.events.helpers import expected_event, ledger, records, settings, wait_until, without_ids
from tests.events.webhook_server import WebhookReceiver

SECRET = "whsec-test-0123456789"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = await WebhookReceiver(SECRET).start()
    yield r
    await r.stop()


def _sink(receiver: WebhookReceiver, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": receiver.url, "secret": SECRET, "name": "billing", **extra}


def _state(service: EventService, name: str) -> dict[str, Any]:
    sink: dict[str, Any] = next(s for s in service.status()["sinks"] if s["name"] == name)
    return sink


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    rows = [OutboxRow(1, "e1", "t", '{"a":1}', 1), OutboxRow(2, "e2", "t", '{"b":2}', 1)]
    body = batch_body(rows)
    assert body == b'{"type":"aigw.usage.batch","events":[{"a":1},{"b":2}]}'
    # Known-answer check, computed independently of the code under test.
    assert sign(b"key", b"The quick brown fox jumps over the lazy dog") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )
    assert SIGNATURE_HEADER == "X-Aigw-Signature"


async def test_signed_batches_match_the_ledger(db_engine: AsyncEngine, db_url: str, receiver: WebhookReceiver) -> None:
    service = EventService(settings(db_url, _sink(receiver, batch_size=25)), db_engine)
    repo = UsageRepo(db_engine, outbox=service.outbox)
    await service.start()
    try:
        for start in range(0, 120, 40):
            await repo.insert_many(records(40, start=start))
        await wait_until(lambda: len(receiver.events) >= 120)
    finally:
        await service.stop()
    assert receiver.bad_signatures == 0
    assert all(len(b) <= 25 for b in receiver.batches) and len(receiver.batches) < 120 / 10  # batched
    rows = await ledger(db_engine)
    events = receiver.events
    assert sorted(e["request_id"] for e in events) == sorted(rows)  # exactly one event per request
    for e in events:
        assert without_ids(e) == expected_event(rows[e["request_id"]])
    assert _state(service, "billing")["delivered"] == 120
    # The status page never shows the URL's query string (it may carry a token).
    assert "token" not in str(service.status())


async def test_failing_webhook_is_retried_until_its_backlog_is_delivered(
    sqlite_url: str, receiver: WebhookReceiver
) -> None:
    engine = make_engine(sqlite_url)
    service = EventService(settings(sqlite_url, _sink(receiver, batch_size=10)), engine, monitor_interval_s=0.05)
    repo = UsageRepo(engine, outbox=service.outbox)
    receiver.fail_with = 500
    await service.start()
    try:
        await repo.insert_many(records(35))
        await wait_until(lambda: _state(service, "billing")["consecutive_failures"] >= 3)
        state = _state(service, "billing")
        assert state["state"] == "failing" and "HTTP 500" in state["last_error"]
        await wait_until(lambda: _state(service, "billing")["backlog"] == 35)
        assert receiver.events == []

        receiver.fail_with = None  # the sink comes back
        await wait_until(lambda: len(receiver.events) >= 35)
        await wait_until(lambda: _state(service, "billing")["backlog"] == 0)
        assert _state(service, "billing")["state"] == "ok"
    finally:
        await service.stop()
        await engine.dispose()
    ids = [e["request_id"] for e in receiver.events]
    assert sorted(ids) == sorted(r.request_id for r in records(35))  # each exactly once: failures were whole calls


async def test_without_a_secret_there_is_no_signature_header(sqlite_url: str) -> None:
    plain = await WebhookReceiver(None).start()
    engine = make_engine(sqlite_url)
    service = EventService(settings(sqlite_url, {"type": "webhook", "url": plain.url}), engine)
    try:
        await service.start()
        await UsageRepo(engine, outbox=service.outbox).insert_many(records(3))
        await wait_until(lambda: len(plain.events) == 3)
        assert all(SIGNATURE_HEADER.lower() not in {k.lower() for k in h} for h in plain.headers)
        assert service.sink_names == ["webhook:127.0.0.1"]
    finally:
        await service.stop()
        await engine.dispose()
        await plain.stop()

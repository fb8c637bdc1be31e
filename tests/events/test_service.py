"""EventService: the backlog bound (dropped events are logged, counted, exposed), status, metrics, rejections."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.events import EventService, Outbox
from aigw.events.outbox import OutboxRow
from aigw.events.publisher import SinkPublisher
from aigw.store.usage import UsageRepo
from tests.events.helpers import FAST, records, settings, wait_until
from tests.support.gateway import free_port
from tests.support.moto import ACCOUNT


class _Metrics:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def event_sink(
        self, *, sink: str, backlog: int, delivered_total: int, failed_calls_total: int, dropped_total: int
    ) -> None:
        self.calls.append(
            {"sink": sink, "backlog": backlog, "delivered": delivered_total, "failed": failed_calls_total,
             "dropped": dropped_total}
        )  # fmt: skip


def _dead_sqs(**extra: Any) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{free_port()}"
    return {"type": "sqs", "queue_url": f"{dead}/{ACCOUNT}/q", "endpoint_url": dead, "name": "dead", **extra}


async def test_a_full_backlog_drops_the_oldest_loudly_and_counts_them(
    db_engine: AsyncEngine, db_url: str, caplog: pytest.LogCaptureFixture, aws_credentials: None
) -> None:
    metrics = _Metrics()
    service = EventService(settings(db_url, _dead_sqs(max_backlog=5)), db_engine, metrics=metrics)
    await service.start()
    try:
        await UsageRepo(db_engine, outbox=service.outbox).insert_many(records(12))
        with caplog.at_level(logging.ERROR, logger="aigw.events"):
            await service.refresh()
        sink = service.status()["sinks"][0]
        # At most the lease-held rows (the batch in flight) may sit above the bound until the next trim.
        assert sink["backlog"] + sink["dropped"] == 12
        await wait_until(lambda: service.publishers[0].stats.consecutive_failures >= 1)
        await service.refresh()
    finally:
        await service.stop()
    # Once no batch is leased, the bound is exact; the drop total is the database's, so it survives restarts.
    restarted = EventService(settings(db_url, _dead_sqs(max_backlog=5)), db_engine, metrics=metrics)
    await restarted.refresh()
    sink = restarted.status()["sinks"][0]
    assert (sink["backlog"], sink["dropped"]) == (5, 7)
    assert sink["state"] == "stopped"
    assert any("dropped the" in r.getMessage() and "max_backlog=5" in r.getMessage() for r in caplog.records)
    assert metrics.calls[-1] == {"sink": "dead", "backlog": 5, "delivered": 0, "failed": 0, "dropped": 7}


async def test_status_reports_orphaned_sinks_and_a_disabled_service(db_engine: AsyncEngine, db_url: str) -> None:
    await UsageRepo(db_engine, outbox=Outbox(db_engine, ["old-sink"])).insert_many(records(4))
    none = EventService(settings(db_url), db_engine)
    assert none.outbox is None and none.sink_names == []
    await none.start()  # nothing to do
    assert none.status()["enabled"] is False and none.status()["sinks"] == []

    service = EventService(settings(db_url, {"type": "webhook", "url": "http://127.0.0.1:9/x"}), db_engine)
    before = service.status()
    assert before["measured_at"] is None and before["sinks"][0]["backlog"] is None
    await service.refresh()
    status = service.status()
    assert status["orphaned"] == [{"sink": "old-sink", "backlog": 4}]
    assert status["sinks"][0]["backlog"] == 0 and status["schema_version"] == 1


async def test_duplicate_sink_names_are_a_config_error(db_engine: AsyncEngine, db_url: str) -> None:
    hooks = [{"type": "webhook", "url": f"http://a.example/{n}"} for n in (1, 2)]
    with pytest.raises(ValueError, match="distinct `name:`"):
        EventService(settings(db_url, *hooks), db_engine)


class _PickySender:
    """Rejects each event the first time it sees it (like an SQS batch entry failing on its own)."""

    target = "picky"

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.accepted: list[int] = []

    async def send(self, rows: Sequence[OutboxRow]) -> dict[int, str]:
        rejected = {r.id: "InternalError: try again" for r in rows if r.id not in self.seen}
        self.seen.update(r.id for r in rows)
        self.accepted.extend(r.id for r in rows if r.id not in rejected)
        return rejected

    async def close(self) -> None:
        pass


async def test_events_rejected_one_by_one_are_retried_until_accepted(db_engine: AsyncEngine, db_url: str) -> None:
    cfg = settings(db_url, {"type": "webhook", "url": "http://127.0.0.1:9/x", "name": "picky", "batch_size": 7})
    outbox = Outbox(db_engine, ["picky"])
    sender = _PickySender()
    pub = SinkPublisher("picky", cfg.events[0], sender, outbox)
    outbox.add_waker(pub.wake)
    await UsageRepo(db_engine, outbox=outbox).insert_many(records(20))
    pub.start()
    try:
        await wait_until(lambda: len(sender.accepted) == 20)
    finally:
        await pub.stop(2.0)
    assert sorted(sender.accepted) == sorted(sender.seen) and len(set(sender.accepted)) == 20
    assert pub.stats.rejected == 20 and pub.stats.delivered == 20 and pub.stats.consecutive_failures == 0
    assert (await outbox.backlog()) == {}


async def test_stop_delivers_what_is_ready_first(db_engine: AsyncEngine, db_url: str) -> None:
    cfg = settings(db_url, {"type": "webhook", "url": "http://127.0.0.1:9/x", "name": "picky", **FAST})
    outbox = Outbox(db_engine, ["picky"])
    sender = _PickySender()
    sender.seen.update(range(1, 1000))  # accept everything at once
    pub = SinkPublisher("picky", cfg.events[0], sender, outbox)
    pub.start()
    await UsageRepo(db_engine, outbox=outbox).insert_many(records(30))  # no notify wiring: only stop's last pass
    await pub.stop(5.0)
    assert len(sender.accepted) == 30

"""The outbox on SQLite and PostgreSQL: written with the ledger, claimed without overlap, settled, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aigw.events.outbox import Outbox
from aigw.store.db import make_engine
from aigw.store.tables import usage_event_outbox, usage_records
from aigw.store.usage import UsageRecord, UsageRepo
from tests.events.helpers import records

SINKS = ("sqs:usage", "webhook:billing")


async def _count(engine: AsyncEngine, table: object = usage_event_outbox) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def test_one_row_per_record_and_sink_in_the_ledgers_transaction(db_engine: AsyncEngine) -> None:
    outbox = Outbox(db_engine, SINKS)
    woken: list[int] = []
    outbox.add_waker(lambda: woken.append(1))
    recs = records(25)
    await UsageRepo(db_engine, outbox=outbox).insert_many(recs)
    assert await _count(db_engine, usage_records) == 25
    backlog = await outbox.backlog()
    assert {k: v.rows for k, v in backlog.items()} == {"sqs:usage": 25, "webhook:billing": 25}
    assert backlog["sqs:usage"].oldest == recs[0].created_at
    assert woken == [1]  # the commit woke the publishers
    claim = await outbox.claim("sqs:usage", 100, 30)
    assert [orjson.loads(r.body)["request_id"] for r in claim.rows] == [r.request_id for r in recs]  # oldest first
    assert all(r.attempts == 1 for r in claim.rows)


class _FailingOutbox(Outbox):
    async def enqueue(self, conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
        await super().enqueue(conn, records)
        raise RuntimeError("boom")


async def test_a_failed_enqueue_rolls_the_usage_records_back(db_engine: AsyncEngine) -> None:
    """All or nothing: a record is never billed without its event, nor an event sent for an unwritten record."""
    with pytest.raises(RuntimeError, match="boom"):
        await UsageRepo(db_engine, outbox=_FailingOutbox(db_engine, SINKS)).insert_many(records(5))
    assert await _count(db_engine, usage_records) == 0
    assert await _count(db_engine) == 0


async def test_without_sinks_nothing_is_enqueued(db_engine: AsyncEngine) -> None:
    await UsageRepo(db_engine, outbox=Outbox(db_engine, ())).insert_many(records(3))
    await UsageRepo(db_engine).insert_many(records(3, start=3))
    assert await _count(db_engine, usage_records) == 6
    assert await _count(db_engine) == 0


async def test_claim_settle_retry_and_release(db_engine: AsyncEngine) -> None:
    outbox = Outbox(db_engine, SINKS)
    await UsageRepo(db_engine, outbox=outbox).insert_many(records(10))
    first = await outbox.claim("sqs:usage", 4, 30)
    second = await outbox.claim("sqs:usage", 4, 30)
    assert {r.id for r in first.rows}.isdisjoint(r.id for r in second.rows)  # leased rows are not handed out twice
    ids = [r.id for r in first.rows]
    # Two delivered, one retried an hour from now, one retried at once (with an over-long error: truncated).
    later = datetime.now(UTC) + timedelta(hours=1)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await outbox.settle(first, ids[:2], {ids[2]: (later, "Throttled: slow down"), ids[3]: (past, "x" * 1000)})
    assert (await outbox.backlog())["sqs:usage"].rows == 8
    await outbox.release(second)
    third = await outbox.claim("sqs:usage", 100, 30)
    got = [r.id for r in third.rows]
    assert ids[2] not in got and ids[3] in got and {r.id for r in second.rows} <= set(got)
    assert next(r for r in third.rows if r.id == ids[3]).attempts == 2
    # The other sink's rows were never touched.
    assert len((await outbox.claim("webhook:billing", 100, 30)).rows) == 10


async def test_an_expired_lease_makes_rows_claimable_again(db_engine: AsyncEngine) -> None:
    """A publisher that died mid-send: its rows go out again once the lease ends (at-least-once)."""
    outbox = Outbox(db_engine, SINKS)
    await UsageRepo(db_engine, outbox=outbox).insert_many(records(3))
    lost = await outbox.claim("sqs:usage", 10, 0.0)
    again = await outbox.claim("sqs:usage", 10, 30)
    assert [r.id for r in again.rows] == [r.id for r in lost.rows]
    # The late publisher cannot undo the new lease by retrying its rows.
    await outbox.settle(lost, [], {r.id: (datetime.now(UTC), "late") for r in lost.rows})
    assert (await outbox.claim("sqs:usage", 10, 30)).rows == []


async def test_trim_drops_the_oldest_beyond_max_backlog_and_counts_them(db_engine: AsyncEngine) -> None:
    outbox = Outbox(db_engine, SINKS)
    recs = records(10)
    await UsageRepo(db_engine, outbox=outbox).insert_many(recs)
    assert await outbox.trim("sqs:usage", 3) == 7
    assert await outbox.trim("sqs:usage", 3) == 0  # idempotent: replicas trimming together do not over-delete
    assert await outbox.dropped() == {"sqs:usage": 7}
    left = await outbox.claim("sqs:usage", 100, 30)
    assert [orjson.loads(r.body)["request_id"] for r in left.rows] == [r.request_id for r in recs[7:]]
    assert (await outbox.backlog())["webhook:billing"].rows == 10  # the other sink keeps everything
    # Leased rows (being sent right now) are not dropped; the count adds up over calls.
    await UsageRepo(db_engine, outbox=outbox).insert_many(records(5, start=10))
    # 8 rows: the 3 leased ones stay, and of the 5 new ones only the newest 2 are kept.
    assert await outbox.trim("sqs:usage", 2) == 3
    assert await outbox.dropped() == {"sqs:usage": 10}
    assert (await outbox.backlog())["sqs:usage"].rows == 5


@pytest.mark.postgres
async def test_concurrent_claims_from_two_engines_never_overlap(pg_url: str) -> None:
    """Two replicas claiming at once (FOR UPDATE SKIP LOCKED): every row goes to exactly one of them."""
    engines = [make_engine(pg_url), make_engine(pg_url)]
    try:
        outboxes = [Outbox(e, SINKS) for e in engines]
        await UsageRepo(engines[0], outbox=outboxes[0]).insert_many(records(400))
        claims = await asyncio.gather(*(outboxes[i % 2].claim("sqs:usage", 10, 30) for i in range(50)))
        ids = [r.id for c in claims for r in c.rows]
        assert len(ids) == len(set(ids)) == 400
    finally:
        for e in engines:
            await e.dispose()

"""UsageRecorder: shutdown when the ledger write hangs (the batch in flight is counted, not lost), and the queue gauges
reported after every flush round."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import pytest

from aigw.metering import UsageRecorder
from aigw.store.usage import UsageRecord, UsageRepo
from tests.store.test_usage_repo import record


class HangingRepo:
    """A ledger whose writes never finish (a database that stopped answering mid-transaction)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        self.started.set()
        await asyncio.Event().wait()


async def test_a_write_abandoned_at_shutdown_is_counted_as_pending(caplog: pytest.LogCaptureFixture) -> None:
    repo = HangingRepo()
    rec = UsageRecorder(cast(UsageRepo, repo), batch_size=5, flush_interval_s=0.01)
    rec.start()
    for n in range(7):
        rec.record(record("t", n))
    await asyncio.wait_for(repo.started.wait(), 5)
    with caplog.at_level(logging.ERROR, logger="aigw.metering"):
        await rec.stop(timeout_s=0.05)
    assert rec.pending == 7, "the batch the cancelled write held is pending again, with the rest"
    assert rec.written == 0
    assert "7 usage records could not be written" in caplog.text


class CountingRepo:
    def __init__(self) -> None:
        self.rows = 0

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        self.rows += len(records)


async def test_queue_gauges_are_reported_after_each_flush_round() -> None:
    """Every process reports its own queue (not only the one a /metrics scrape reaches)."""
    reports: list[tuple[int, int]] = []
    repo = CountingRepo()
    rec = UsageRecorder(
        cast(UsageRepo, repo),
        batch_size=100,
        flush_interval_s=0.01,
        max_pending=3,
        on_flush=lambda *r: reports.append(r),
    )
    for n in range(5):  # two over the bound: dropped, oldest first
        rec.record(record("t", n))
    rec.start()
    await rec.flush()
    deadline = asyncio.get_running_loop().time() + 5
    while not reports and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await rec.stop()
    assert repo.rows == 3 and rec.dropped == 2
    assert reports and reports[-1] == (0, 2)


class ArrivalsDuringWrite:
    """A ledger during whose first write more records arrive (steady traffic while a batch is being written)."""

    def __init__(self, arrivals: int) -> None:
        self.batches: list[int] = []
        self.arrivals = arrivals
        self.recorder: UsageRecorder | None = None

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        self.batches.append(len(records))
        if len(self.batches) == 1 and self.recorder is not None:
            for n in range(self.arrivals):
                self.recorder.record(record("t", 100 + n))
        await asyncio.sleep(0)


async def test_a_flush_round_does_not_chase_records_that_arrive_while_it_writes() -> None:
    """Under steady traffic a round that kept writing whatever arrived meanwhile never ended: a transaction of a few
    rows every few milliseconds. Late arrivals wait for the next round (or a full batch, or a drain)."""
    repo = ArrivalsDuringWrite(arrivals=3)
    rounds: list[tuple[int, int]] = []
    round_done = asyncio.Event()

    def on_flush(pending: int, dropped: int) -> None:
        rounds.append((pending, dropped))
        round_done.set()

    rec = UsageRecorder(cast(UsageRepo, repo), batch_size=5, flush_interval_s=60, on_flush=on_flush)
    repo.recorder = rec
    rec.start()
    for n in range(5):  # a full batch wakes the writer at once
        rec.record(record("t", n))
    await asyncio.wait_for(round_done.wait(), 5)
    assert repo.batches == [5] and rec.pending == 3 and rounds == [(3, 0)]
    await asyncio.wait_for(rec.flush(), 5)  # a drain writes everything, small batches included
    assert repo.batches == [5, 3] and rec.pending == 0
    await rec.stop()
    assert rec.written == 8


class DownRepo:
    """A database that is down: every write fails at once."""

    def __init__(self) -> None:
        self.attempts = 0

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        self.attempts += 1
        raise ConnectionRefusedError("database down")


async def test_records_arriving_during_an_outage_do_not_defeat_the_back_off() -> None:
    """Once a write has failed, the next attempt waits for the back-off: a full batch arriving does not wake the
    writer (it did, a retry and a warning per request while the database was down)."""
    repo = DownRepo()
    rec = UsageRecorder(cast(UsageRepo, repo), batch_size=5, flush_interval_s=60)
    rec.start()
    try:
        for n in range(5):
            rec.record(record("t", n))
        async with asyncio.timeout(5):
            while repo.attempts == 0 or not rec._backing_off:
                await asyncio.sleep(0)
        for n in range(5, 100):
            rec.record(record("t", n))
            await asyncio.sleep(0)
        assert repo.attempts == 1 and rec.pending == 100
    finally:
        rec._pending.clear()  # nothing to drain at stop: the database stays down
        await rec.stop(timeout_s=1)


async def test_the_writer_survives_an_error_outside_the_write() -> None:
    repo = CountingRepo()
    calls = 0

    def flaky(pending: int, dropped: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a gauge that failed once")

    rec = UsageRecorder(cast(UsageRepo, repo), batch_size=5, flush_interval_s=0.01, on_flush=flaky)
    rec.start()
    try:
        for n in range(5):
            rec.record(record("t", n))
        await asyncio.wait_for(rec.flush(), 5)
        for n in range(5, 10):
            rec.record(record("t", n))
        await asyncio.wait_for(rec.flush(), 5)
        assert repo.rows == 10 and calls >= 2
    finally:
        await rec.stop(timeout_s=1)

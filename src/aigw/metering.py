"""UsageRecorder: usage records leave the request path through a bounded in-memory buffer and are written in
batches by one background task (flush by size or interval, retried with back-off, drained on shutdown).

``record`` never awaits and never touches the database. When the database is down, records wait in memory up to
``max_pending``; past that the oldest are dropped and counted (``dropped``) and logged, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.exc import DataError, IntegrityError

from aigw.store.usage import UsageRecord, UsageRepo

log = logging.getLogger("aigw.metering")

# What the database says about the rows themselves (a value it cannot store), as opposed to its own trouble
# (down, slow, full): retrying cannot help those rows, and must not hold up the others behind them.
_ROW_ERRORS = (
    DataError,
    IntegrityError,
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    ValueError,  # store.bulk's own check (a naive datetime)
)


class UsageRecorder:
    def __init__(
        self,
        repo: UsageRepo,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_pending: int = 100_000,
        on_flush: Callable[[int, int], None] | None = None,
    ) -> None:
        """``on_flush(pending, dropped_total)`` after every flush round (each ``flush_interval_s`` at least): the
        queue's gauges stay current in every process, whether or not it is the one a scrape reaches."""
        self._repo = repo
        self._batch = batch_size
        self._interval = flush_interval_s
        self._max = max_pending
        self._on_flush = on_flush
        self._pending: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._draining = False  # flush() waits: write until nothing is pending
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.rejected = 0  # records the database refused on their own (logged, never retried)
        self._backing_off = False  # the last write failed: wait for the back-off, not for the next record

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, rec: UsageRecord) -> None:
        if len(self._pending) >= self._max:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage buffer full (%d pending): %d records dropped so far", self._max, self.dropped)
        self._pending.append(rec)
        self._idle.clear()
        if len(self._pending) >= self._batch and not self._backing_off:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aigw-usage-recorder")

    async def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            if not self._pending:
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff or self._interval)
            self._wake.clear()
            try:
                ok = await self._flush_some()
                if self._on_flush is not None:
                    self._on_flush(len(self._pending), self.dropped)
            except Exception:  # the writer must outlive any one round: its records are still pending
                log.exception("usage writer: unexpected error; retrying")
                ok = False
            backoff = 0.0 if ok else min(max(backoff * 2, 0.5), 30.0)
            self._backing_off = not ok

    async def _flush_some(self) -> bool:
        """Write what is pending, a batch at a time. False if the database refused (records kept).

        One round writes what is pending when it starts and then only full batches, unless a drain was asked for
        (``flush``, ``stop``): chasing the records that arrive during each write kept the writer busy without end
        under steady traffic, a transaction of a few rows every few milliseconds on the request path's core."""
        due = len(self._pending)  # what was pending when the round began
        while self._pending and (due > 0 or self._draining or self._stopping or len(self._pending) >= self._batch):
            batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
            due -= len(batch)
            try:
                await self._repo.insert_many(batch)
            except asyncio.CancelledError:
                # Shutdown gave up on a hanging write: the batch is pending again (the last flush retries it, and
                # the shutdown log counts it if that fails too) rather than dropped without a word.
                self._pending.extendleft(reversed(batch))
                raise
            except _ROW_ERRORS as exc:
                # A row the database will never take: write the batch's rows one by one and set aside the ones
                # refused (a batch retried whole would block every record behind it for good).
                log.warning("usage batch refused (%s): writing its records one by one", type(exc).__name__)
                if not await self._write_each(batch):
                    return False
                continue
            except Exception as exc:
                self._keep(batch, exc)
                return False
            self.written += len(batch)
        if not self._pending:
            self._draining = False
            self._idle.set()
        return True

    async def _write_each(self, batch: list[UsageRecord]) -> bool:
        for i, rec in enumerate(batch):
            try:
                await self._repo.insert_many([rec])
            except _ROW_ERRORS as exc:
                self.rejected += 1
                log.error(
                    "usage record refused by the database (%s): request %s, tenant %s; set aside",
                    type(exc).__name__,
                    rec.request_id,
                    rec.tenant_id,
                )
                continue
            except asyncio.CancelledError:
                self._pending.extendleft(reversed(batch[i:]))
                raise
            except Exception as exc:  # the database's own trouble: the rest wait for the next round
                self._keep(batch[i:], exc)
                return False
            self.written += 1
        return True

    def _keep(self, records: list[UsageRecord], exc: Exception) -> None:
        """A write the database failed (down, slow): its records go back to the front of the queue."""
        self._pending.extendleft(reversed(records))
        self.failures += 1
        log.warning("usage write failed (%s); %d records kept for retry", type(exc).__name__, self.pending)

    async def flush(self) -> None:
        """Wait until everything recorded so far is written (used by shutdown and tests)."""
        self._draining = True
        self._wake.set()
        await self._idle.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=timeout_s)
            except TimeoutError:
                pass
            except Exception:  # the writer died: its records are still pending, and the final flush writes them
                log.exception("usage writer failed")
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush_some(), timeout=timeout_s)
        if self._pending:
            log.error("shutdown: %d usage records could not be written", len(self._pending))


async def prune_forever(repo: UsageRepo, retention_days: int, every_s: float = 3600.0) -> None:
    """Retention: raw usage rows older than ``retention_days`` are deleted hourly (daily rollups are kept)."""
    while True:
        try:
            cutoff = datetime.now(UTC) - timedelta(days=retention_days)
            removed = await repo.prune(cutoff)
            if removed:
                log.info("retention: deleted %d usage records older than %s", removed, cutoff.date())
        except Exception as exc:  # the database may be down: try again next time
            log.warning("retention prune failed (%s)", type(exc).__name__)
        await asyncio.sleep(every_s)

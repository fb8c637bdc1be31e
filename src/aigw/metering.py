"""UsageRecorder: usage records leave the request path through a bounded in-memory buffer and are written in
batches by one background task (flush by size or interval, retried with back-off, drained on shutdown).

``record`` never awaits and never touches the database. When the database is down, records wait in memory up to
``max_pending``; past that the oldest are dropped and counted (``dropped``) and logged, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aigw.store.usage import UsageRecord, UsageRepo

log = logging.getLogger("aigw.metering")


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
        if len(self._pending) >= self._batch:
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
            backoff = 0.0 if await self._flush_some() else min(max(backoff * 2, 0.5), 30.0)
            if self._on_flush is not None:
                self._on_flush(len(self._pending), self.dropped)

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
            except Exception as exc:
                self._pending.extendleft(reversed(batch))
                self.failures += 1
                log.warning("usage write failed (%s); %d records kept for retry", type(exc).__name__, self.pending)
                return False
            self.written += len(batch)
        if not self._pending:
            self._draining = False
            self._idle.set()
        return True

    async def flush(self) -> None:
        """Wait until everything recorded so far is written (used by shutdown and tests)."""
        self._draining = True
        self._wake.set()
        await self._idle.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, timeout=timeout_s)
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

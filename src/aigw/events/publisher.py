"""One background publisher per sink: claim a batch from the outbox, send it, settle it, repeat.

Each sink has its own task, sender, back-off and outbox rows, so a dead sink only slows itself down. A failed call
backs the whole sink off (exponential, jittered, capped by ``max_backoff_s``) and puts its events back for after the
back-off, so other replicas wait too; an event the destination rejects on its own (an entry of a batch call) gets
its own back-off by attempt count. Nothing is ever given up on: an event leaves the outbox when it was delivered or
when the backlog bound drops it (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aigw.events.outbox import Claim, Outbox, OutboxRow
from aigw.events.sinks import Sender, SinkConfig

log = logging.getLogger("aigw.events")


class _Step(enum.Enum):
    BUSY = "busy"  # a full claim went out: more may be waiting
    IDLE = "idle"  # caught up: wait for new events
    FAILED = "failed"  # back off


@dataclass(slots=True)
class SinkStats:
    """This process's view of one sink (the backlog itself is measured by ``EventService``)."""

    delivered: int = 0
    calls: int = 0  # batch calls made
    failed_calls: int = 0
    rejected: int = 0  # single events the destination refused (they are retried)
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    retry_at: datetime | None = None  # while backing off


@dataclass(frozen=True, slots=True)
class _Outcome:
    rows: Sequence[OutboxRow]
    rejected: dict[int, str]
    error: str | None  # the whole call failed


class SinkPublisher:
    def __init__(self, name: str, cfg: SinkConfig, sender: Sender, outbox: Outbox) -> None:
        self.name = name
        self.cfg = cfg
        self.sender = sender
        self.stats = SinkStats()
        self._outbox = outbox
        # A call is bounded by the sender's own timeouts; this outer bound only guards against a stuck one.
        self._call_timeout = 2 * cfg.timeout_s + 1
        # The lease outlives any call, so no other replica can claim rows that are still being sent.
        self._lease_s = max(30.0, 2 * self._call_timeout + 5)
        self._claim_size = cfg.batch_size * cfg.parallel
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry_delay = 0.0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"aigw-events-{self.name}")

    async def stop(self, timeout_s: float) -> None:
        """Drain what is ready (one last pass while the sink works), then stop; bounded by ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout_s)
            except TimeoutError:
                log.warning("events: sink %s did not finish its last batch in %.0fs; its events stay queued",
                            self.name, timeout_s)  # fmt: skip
        await self.sender.close()

    async def _run(self) -> None:
        while True:
            # Read before the step: the last pass must begin after stop() was called, or it could miss events.
            last_pass = self._stop.is_set()
            try:
                step = await self._step()
            except Exception as exc:  # a bug must not end delivery for good: log it and back off
                log.exception("events: sink %s publisher step failed", self.name)
                self._failed(f"internal: {brief(exc)}")
                step = _Step.FAILED
            if step is _Step.BUSY:
                continue
            if last_pass:
                return
            if self._stop.is_set():
                continue
            if step is _Step.IDLE:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval_s)
            else:
                # Not woken by new events: the sink is what failed. Only stopping cuts the back-off short.
                self.stats.retry_at = _now() + timedelta(seconds=self._retry_delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._retry_delay)
                self.stats.retry_at = None

    def _backoff(self, failures: int) -> float:
        base: float = self.cfg.min_backoff_s * 2.0 ** min(max(failures - 1, 0), 30)  # no float overflow, ever
        return min(self.cfg.max_backoff_s, base) * random.uniform(0.8, 1.0)

    async def _step(self) -> _Step:
        self._wake.clear()  # before the claim: events committed after its snapshot wake the next wait at once
        try:
            claim = await self._outbox.claim(self.name, self._claim_size, self._lease_s)
        except Exception as exc:
            self._failed(f"database: {brief(exc)}")
            return _Step.FAILED
        if not claim.rows:
            return _Step.IDLE
        size = self.cfg.batch_size
        batches = [claim.rows[i : i + size] for i in range(0, len(claim.rows), size)]
        try:
            outcomes = await asyncio.gather(*(self._send(b) for b in batches))
        except asyncio.CancelledError:
            # Stopped mid-call: hand the rows straight back (some may have gone out: at-least-once).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._outbox.release(claim)), 5.0)
            raise
        return await self._settle(claim, outcomes)

    async def _send(self, rows: Sequence[OutboxRow]) -> _Outcome:
        self.stats.calls += 1
        try:
            rejected = await asyncio.wait_for(self.sender.send(rows), self._call_timeout)
        except Exception as exc:
            return _Outcome(rows, {}, str(exc) or type(exc).__name__)
        return _Outcome(rows, rejected, None)

    async def _settle(self, claim: Claim, outcomes: Sequence[_Outcome]) -> _Step:
        now = _now()
        call_error = next((o.error for o in outcomes if o.error), None)
        # The same delay for the rows and for this publisher's pause, so the oldest events are retried first.
        delay = self._backoff(self.stats.consecutive_failures + 1) if call_error else 0.0
        call_retry = now + timedelta(seconds=delay)
        delivered: list[int] = []
        retry: dict[int, tuple[datetime, str]] = {}
        by_attempts: dict[int, datetime] = {}  # one retry time per attempt count: fewer UPDATEs when settling
        for o in outcomes:
            for row in o.rows:
                if o.error is not None:
                    retry[row.id] = (call_retry, o.error)
                elif row.id in o.rejected:
                    at = by_attempts.get(row.attempts)
                    if at is None:
                        at = by_attempts[row.attempts] = now + timedelta(seconds=self._backoff(row.attempts))
                    retry[row.id] = (at, o.rejected[row.id])
                else:
                    delivered.append(row.id)
        try:
            await self._outbox.settle(claim, delivered, retry)
        except Exception as exc:
            # The sends happened; the rows stay leased and go out again when the lease ends (at-least-once).
            self._failed(f"database: {brief(exc)}")
            return _Step.FAILED
        self.stats.delivered += len(delivered)
        rejections = [(row_id, why) for o in outcomes if o.error is None for row_id, why in o.rejected.items()]
        if rejections:
            self.stats.rejected += len(rejections)
            log.warning("events: sink %s rejected %d events (retried later), e.g. %s",
                        self.name, len(rejections), rejections[0][1])  # fmt: skip
        if call_error is not None:
            self.stats.failed_calls += sum(1 for o in outcomes if o.error)
            self._failed(call_error, delay)
            return _Step.FAILED
        if self.stats.consecutive_failures:
            log.info("events: sink %s recovered after %d failed attempts", self.name, self.stats.consecutive_failures)
        self.stats.consecutive_failures = 0
        self.stats.last_success_at = now
        return _Step.BUSY if len(claim.rows) >= self._claim_size else _Step.IDLE

    def _failed(self, error: str, delay: float | None = None) -> None:
        s = self.stats
        s.consecutive_failures += 1
        self._retry_delay = self._backoff(s.consecutive_failures) if delay is None else delay
        changed = error != s.last_error
        s.last_error, s.last_error_at = error, _now()
        # First failure, a new cause, then every 100th: a dead sink logs, but does not flood the log.
        if s.consecutive_failures == 1 or changed or s.consecutive_failures % 100 == 0:
            log.warning("events: sink %s failed (%d in a row; retrying with back-off): %s",
                        self.name, s.consecutive_failures, error)  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


def brief(exc: BaseException) -> str:
    """Type and first line only: a database error's text goes on to quote the statement and its parameters."""
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"

"""The transactional outbox of usage events, on the usage ledger's own database.

* ``enqueue`` runs inside ``UsageRepo.insert_many``'s transaction: a usage record and its events are committed
  together or not at all. One row per (record, sink), so every sink progresses, fails and is bounded on its own.
* ``claim`` leases a sink's oldest available rows to one publisher: on PostgreSQL the candidate rows are locked with
  ``FOR UPDATE SKIP LOCKED``, so concurrent replicas take disjoint rows instead of waiting for each other; on
  SQLite the claiming UPDATE holds the database's single write lock. The lease is ``available_at`` in the future,
  so a publisher that dies mid-send has its rows published again once the lease ends (at-least-once).
* ``settle`` deletes what a sink accepted (delivered rows are not kept: the ledger is the history) and puts the rest
  back with a retry time. ``trim`` enforces the per-sink backlog bound, counting what it drops in
  ``usage_event_sinks`` so the total survives restarts and is the same on every replica.

Times come from this process's clock: replicas need clocks within a few seconds of each other (leases are ≥ 30 s).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, not_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aigw.events.schema import encode
from aigw.store.bulk import insert_rows
from aigw.store.tables import usage_event_outbox as outbox
from aigw.store.tables import usage_event_sinks
from aigw.store.usage import UsageRecord

_COPY_COLUMNS = ("sink", "event_id", "tenant_id", "created_at", "available_at", "attempts", "body")
_IN_CHUNK = 1000  # ids per IN (...) list: well under both drivers' bound-parameter limits
_ERROR_MAX = 300  # usage_event_outbox.last_error


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    tenant_id: str
    body: str
    attempts: int  # including this one


@dataclass(frozen=True, slots=True)
class Claim:
    token: str
    rows: list[OutboxRow]  # in id order (oldest first)


@dataclass(frozen=True, slots=True)
class Backlog:
    rows: int
    oldest: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i : i + _IN_CHUNK]


class Outbox:
    def __init__(self, engine: AsyncEngine, sinks: Sequence[str]) -> None:
        self._engine = engine
        self.sinks = tuple(sinks)
        self._wakers: list[Callable[[], None]] = []

    # -- writing (inside the ledger's transaction) ----------------------------------------------------------------

    async def enqueue(self, conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
        """Add one event per record for every sink, on the caller's transaction."""
        if not self.sinks or not records:
            return
        now = _now()
        encoded = [(encode(r), r.created_at) for r in records]
        rows = [
            (sink, e.event_id, e.tenant_id, created, now, 0, e.body) for sink in self.sinks for e, created in encoded
        ]
        await insert_rows(conn, outbox, _COPY_COLUMNS, rows)

    def add_waker(self, waker: Callable[[], None]) -> None:
        self._wakers.append(waker)

    def notify(self) -> None:
        """Called after an enqueueing transaction committed: local publishers look now instead of at their next poll.
        Must run on the publishers' event loop."""
        for wake in self._wakers:
            wake()

    # -- publishing -----------------------------------------------------------------------------------------------

    async def claim(self, sink: str, limit: int, lease_s: float) -> Claim:
        """Lease up to ``limit`` of the sink's oldest available rows to the caller for ``lease_s`` seconds."""
        now = _now()
        token = uuid.uuid4().hex
        candidates = (
            select(outbox.c.id)
            .where(outbox.c.sink == sink, outbox.c.available_at <= now)
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders no locking clause (one writer anyway)
        )
        stmt = (
            update(outbox)
            .where(outbox.c.id.in_(candidates))
            .values(
                available_at=datetime.fromtimestamp(now.timestamp() + lease_s, UTC),
                claim=token,
                attempts=outbox.c.attempts + 1,
            )
            .returning(outbox.c.id, outbox.c.event_id, outbox.c.tenant_id, outbox.c.body, outbox.c.attempts)
        )
        async with self._engine.begin() as conn:
            result = (await conn.execute(stmt)).all()
        rows = sorted((OutboxRow(r.id, r.event_id, r.tenant_id, r.body, r.attempts) for r in result), key=_by_id)
        return Claim(token, rows)

    async def settle(
        self, claim: Claim, delivered: Sequence[int], retry: Mapping[int, tuple[datetime, str]] | None = None
    ) -> None:
        """Delete the delivered rows; give the others back with their retry time and error, in one transaction.

        A retried row is only touched while the claim is still ours: if its lease ran out and another publisher
        claimed it meanwhile, that publisher's lease stands."""
        groups: dict[tuple[datetime, str], list[int]] = defaultdict(list)
        for row_id, (at, error) in (retry or {}).items():
            groups[(at, error[:_ERROR_MAX])].append(row_id)
        async with self._engine.begin() as conn:
            for ids in _chunks(list(delivered)):
                await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))
            for (at, error), ids in groups.items():
                for part in _chunks(ids):
                    await conn.execute(
                        update(outbox)
                        .where(outbox.c.id.in_(part), outbox.c.claim == claim.token)
                        .values(available_at=at, claim=None, last_error=error)
                    )

    async def release(self, claim: Claim) -> None:
        """Give a claim's rows back at once (shutdown while a batch was in flight)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(outbox).where(outbox.c.claim == claim.token).values(available_at=_now(), claim=None)
            )

    # -- the backlog bound and its measurement --------------------------------------------------------------------

    async def trim(self, sink: str, max_backlog: int) -> int:
        """Drop the sink's oldest rows beyond its newest ``max_backlog`` (rows leased to a publisher right now are
        left alone); returns how many were dropped and adds them to the sink's persistent total.

        The cut-off is "keep the newest N", not "delete the excess": replicas trimming at once cannot over-delete."""
        now = _now()
        cutoff_q = (
            select(outbox.c.id).where(outbox.c.sink == sink).order_by(outbox.c.id.desc()).offset(max_backlog).limit(1)
        )
        leased = and_(outbox.c.claim.is_not(None), outbox.c.available_at > now)
        async with self._engine.begin() as conn:
            cutoff = (await conn.execute(cutoff_q)).scalar_one_or_none()
            if cutoff is None:
                return 0
            result = await conn.execute(
                delete(outbox).where(outbox.c.sink == sink, outbox.c.id <= cutoff, not_(leased))
            )
            dropped = int(result.rowcount)
            if dropped:
                await _add_dropped(conn, sink, dropped, now)
        return dropped

    async def backlog(self) -> dict[str, Backlog]:
        """Undelivered rows per sink name found in the outbox (configured or not)."""
        query = select(outbox.c.sink, func.count(), func.min(outbox.c.created_at)).group_by(outbox.c.sink)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {sink: Backlog(int(n), oldest) for sink, n, oldest in rows}

    async def dropped(self) -> dict[str, int]:
        """Events dropped by the backlog bound so far, per sink, over every replica's lifetime."""
        query = select(usage_event_sinks.c.sink, usage_event_sinks.c.dropped)
        async with self._engine.connect() as conn:
            return {sink: int(n) for sink, n in (await conn.execute(query)).all()}


def _by_id(row: OutboxRow) -> int:
    return row.id


async def _add_dropped(conn: AsyncConnection, sink: str, n: int, now: datetime) -> None:
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(usage_event_sinks).values(sink=sink, dropped=n, last_dropped_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[usage_event_sinks.c.sink],
        set_={"dropped": usage_event_sinks.c.dropped + stmt.excluded.dropped, "last_dropped_at": now},
    )
    await conn.execute(stmt)

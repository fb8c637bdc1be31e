"""EventService: the usage-event pipeline of one process, built from the config's ``events:`` section.

``outbox`` (None without sinks) goes to ``UsageRepo(engine, outbox=...)``, which enqueues events in the ledger's own
transaction. ``start`` runs one publisher per sink and a monitor that, every ``monitor_interval_s``, enforces each
sink's ``max_backlog`` (dropping the oldest events, logged and counted) and measures the backlogs for ``status()``
(served at ``GET /admin/events``) and for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.config import Settings
from aigw.events.outbox import Backlog, Outbox
from aigw.events.publisher import SinkPublisher, brief
from aigw.events.schema import EVENT_TYPE, SCHEMA_VERSION
from aigw.events.sinks import build_sender, sink_names

log = logging.getLogger("aigw.events")


class EventMetrics(Protocol):
    """Where the monitor reports each sink's numbers (``aigw.telemetry.metrics.Metrics`` implements it)."""

    def event_sink(
        self, *, sink: str, backlog: int, delivered_total: int, failed_calls_total: int, dropped_total: int
    ) -> None: ...


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


class EventService:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        *,
        metrics: EventMetrics | None = None,
        monitor_interval_s: float = 5.0,
    ) -> None:
        self._configs = list(settings.events)
        self.sink_names = sink_names(self._configs)  # raises on duplicate names: a config error
        self.outbox: Outbox | None = Outbox(engine, self.sink_names) if self.sink_names else None
        self._metrics = metrics
        self._interval = monitor_interval_s
        self._publishers: list[SinkPublisher] = []
        self._monitor: asyncio.Task[None] | None = None
        self._backlog: dict[str, Backlog] = {}
        self._dropped: dict[str, int] = {}
        self._measured_at: datetime | None = None
        self._measure_error: str | None = None
        self._orphans_logged: set[str] = set()
        self._running = False

    @property
    def publishers(self) -> list[SinkPublisher]:
        return list(self._publishers)

    async def start(self) -> None:
        """Start publishing. Raises only for a sink that cannot work at all (its client library is missing)."""
        if self.outbox is None or self._running:
            return
        for name, cfg in zip(self.sink_names, self._configs, strict=True):
            pub = SinkPublisher(name, cfg, build_sender(cfg), self.outbox)
            self.outbox.add_waker(pub.wake)
            self._publishers.append(pub)
        for pub in self._publishers:
            pub.start()
        self._running = True
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop(), name="aigw-events-monitor")
        log.info("events: publishing usage events to %s", ", ".join(self.sink_names))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after a last delivery pass (bounded by ``timeout_s``); what is left stays in the outbox."""
        self._running = False
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        await asyncio.gather(*(p.stop(timeout_s) for p in self._publishers))

    async def _monitor_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)

    async def refresh(self) -> None:
        """Enforce the backlog bounds and measure the backlogs now (the monitor does this periodically)."""
        assert self.outbox is not None
        try:
            for name, cfg in zip(self.sink_names, self._configs, strict=True):
                dropped = await self.outbox.trim(name, cfg.max_backlog)
                if dropped:
                    log.error("events: sink %s had more than max_backlog=%d undelivered events: dropped the %d "
                              "oldest (see GET /admin/events)", name, cfg.max_backlog, dropped)  # fmt: skip
            self._backlog = await self.outbox.backlog()
            self._dropped = await self.outbox.dropped()
        except Exception as exc:  # the database may be down: keep the last numbers, say why they are old
            self._measure_error = brief(exc)
            log.warning("events: could not measure the outbox (%s)", type(exc).__name__)
            return
        self._measure_error = None
        self._measured_at = datetime.now(UTC)
        for name, b in self._backlog.items():
            if name not in self.sink_names and name not in self._orphans_logged:
                self._orphans_logged.add(name)
                log.warning("events: %d queued events belong to sink %r, which is no longer configured; they are "
                            "kept until it is configured again or the rows are deleted", b.rows, name)  # fmt: skip
        if self._metrics is not None:
            for name in self.sink_names:
                stats = next((p.stats for p in self._publishers if p.name == name), None)
                self._metrics.event_sink(
                    sink=name,
                    backlog=self._backlog[name].rows if name in self._backlog else 0,
                    delivered_total=stats.delivered if stats else 0,
                    failed_calls_total=stats.failed_calls if stats else 0,
                    dropped_total=self._dropped.get(name, 0),
                )

    def status(self) -> dict[str, Any]:
        """Per sink: its backlog (all replicas, as last measured), drops (all replicas, ever) and this process's
        delivery counters; plus events queued for sinks that are no longer configured."""
        now = datetime.now(UTC)
        sinks = []
        for name, cfg in zip(self.sink_names, self._configs, strict=True):
            pub = next((p for p in self._publishers if p.name == name), None)
            backlog = self._backlog.get(name, Backlog(0, None)) if self._measured_at else None
            s = pub.stats if pub is not None else None
            state = "stopped" if not self._running or s is None else ("failing" if s.consecutive_failures else "ok")
            sinks.append(
                {
                    "name": name,
                    "type": cfg.type,
                    "target": pub.sender.target if pub is not None else None,
                    "state": state,
                    "backlog": backlog.rows if backlog else None,
                    "oldest_event_age_s": (
                        max(0.0, round((now - backlog.oldest).total_seconds(), 3))
                        if backlog and backlog.oldest
                        else None
                    ),
                    "max_backlog": cfg.max_backlog,
                    "dropped": self._dropped.get(name, 0),
                    "delivered": s.delivered if s else 0,
                    "calls": s.calls if s else 0,
                    "failed_calls": s.failed_calls if s else 0,
                    "rejected": s.rejected if s else 0,
                    "consecutive_failures": s.consecutive_failures if s else 0,
                    "last_error": s.last_error if s else None,
                    "last_error_at": _iso(s.last_error_at) if s else None,
                    "last_success_at": _iso(s.last_success_at) if s else None,
                    "retry_at": _iso(s.retry_at) if s else None,
                }
            )
        orphaned = [
            {"sink": name, "backlog": b.rows}
            for name, b in sorted(self._backlog.items())
            if name not in self.sink_names
        ]
        return {
            "enabled": bool(self.sink_names),
            "event_type": EVENT_TYPE,
            "schema_version": SCHEMA_VERSION,
            "measured_at": _iso(self._measured_at),
            "measure_error": self._measure_error,
            "sinks": sinks,
            "orphaned": orphaned,
        }

"""prometheus_client multiprocess mode: the shared directory's life cycle and the aggregated scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as _mp
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest


def prepare_multiproc_dir(path: str) -> None:
    """Create the multiprocess directory and remove stale files from an earlier run: call once in the parent,
    before starting workers (their pids may be reused, and dead workers' counters would be added to the new ones).
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def mark_process_dead(pid: int, registry_dir: str) -> None:
    """Forget a dead worker's live gauges (queue depth, breaker state); its counters stay, as they should."""
    _mp.mark_process_dead(pid, registry_dir)  # type: ignore[no-untyped-call]


def render_multiprocess(registry_dir: str) -> tuple[bytes, str]:
    """Exposition text aggregated over every process that wrote into ``registry_dir``."""
    registry = CollectorRegistry()
    _mp.MultiProcessCollector(registry, path=registry_dir)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4

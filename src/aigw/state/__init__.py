"""Shared state behind the request path: the in-process implementations are the embedded default, the Redis ones
share state between replicas (and degrade to the in-process ones when Redis fails)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from aigw.breaker import Outcome, Permit, TargetHealth

__all__ = ["BreakerStore"]


class BreakerStore(Protocol):
    """Circuit state per target (``aigw.breaker`` has the rules). Implementations never raise on backend trouble."""

    async def acquire(self, key: str) -> Permit | None:
        """A permit to call the target; None = skip it (open, or half-open with a trial in flight)."""
        ...

    async def release(self, permit: Permit, outcome: Outcome, error: str | None = None) -> None:
        """Hand the permit back with the call's outcome; ``error`` becomes the target's last error on a failure."""
        ...

    async def snapshot(self, keys: Iterable[str]) -> list[TargetHealth]:
        """Health of each key, in order; unknown keys are closed with zero counts."""
        ...

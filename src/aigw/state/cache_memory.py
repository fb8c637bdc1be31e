"""The in-process response cache: LRU bounded by the total size of the stored values, TTL checked on read."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

__all__ = ["CacheStore", "MemoryCacheStore", "PendingRead"]


class PendingRead(Protocol):
    """A read under way (``CacheStore.get_soon``). ``value`` answers as ``get`` would, a miss for Redis trouble
    included; ``cancel`` gives it up (its reply is still read and dropped)."""

    async def value(self) -> bytes | None: ...

    def cancel(self) -> None: ...


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    def get_soon(self, key: str) -> PendingRead | None:
        """The read sent at once without a task (it leaves in this turn's write with the commands issued after it),
        or None when the store cannot: then await ``get``."""

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...


class MemoryCacheStore:
    """``max_bytes`` bounds the sum of stored values (keys and bookkeeping are not counted)."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # oldest use first
        self.size_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def get_soon(self, key: str) -> PendingRead | None:
        return None  # get() never waits: nothing to overlap

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if key in self._entries:
            self._drop(key)
        if ttl_s <= 0 or len(value) > self.max_bytes:
            return  # never stored: expired at once, or could only fit by evicting everything and more
        while self.size_bytes + len(value) > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        self._entries[key] = (value, self._clock() + ttl_s)
        self.size_bytes += len(value)

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.size_bytes -= len(value)

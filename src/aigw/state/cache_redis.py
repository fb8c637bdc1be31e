"""The Redis response cache, shared by replicas: ``SET key value EX ttl`` and ``GET``.

Redis trouble never reaches the caller: a failed or slow call (``op_timeout_s`` bounds it) is a miss for ``get``
and a dropped write for ``set`` (counted in ``dropped_sets``), and marks Redis down for ``retry_interval_s`` so the
calls meanwhile skip it instead of paying a timeout each. The request is then simply served uncached.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["RedisCacheStore"]

log = logging.getLogger(__name__)


class RedisCacheStore:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "aigw:cache:",
        op_timeout_s: float = 0.25,
        retry_interval_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._op_timeout_s = op_timeout_s
        self._retry_interval_s = retry_interval_s
        self._skip_until = -math.inf
        self.redis_errors = 0
        self.skipped_gets = 0  # reads answered as a miss because Redis failed or was being skipped
        self.dropped_sets = 0  # writes not stored because Redis failed or was being skipped

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self._skip_until

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        if not self.degraded:
            try:
                async with asyncio.timeout(self._op_timeout_s):
                    value = await self._redis.get(self._key(key))
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
            else:
                return value if isinstance(value, bytes) else None
        self.skipped_gets += 1
        return None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        if not self.degraded:
            try:
                async with asyncio.timeout(self._op_timeout_s):
                    await self._redis.set(self._key(key), value, ex=ttl_s)
                return
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
        self.dropped_sets += 1

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self._skip_until = time.monotonic() + self._retry_interval_s
        if self.redis_errors == 1 or self.redis_errors % 1000 == 0:
            log.warning("response cache: Redis unavailable (%r); serving uncached", exc)

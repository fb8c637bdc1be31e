"""The Redis response cache, shared by replicas: ``SET key value EX ttl`` and ``GET``.

Redis trouble never reaches the caller: a failed or slow call (``op_timeout_s`` bounds it) is a miss for ``get``
and a dropped write for ``set`` (counted in ``dropped_sets``), and marks Redis down for ``retry_interval_s`` so the
calls meanwhile skip it instead of paying a timeout each. The request is then simply served uncached.
"""

from __future__ import annotations

import logging

from aigw.state.redis_calls import REDIS_DOWN, GuardedStore, RedisClient, RedisGuard

__all__ = ["RedisCacheStore"]

log = logging.getLogger(__name__)


class RedisCacheStore(GuardedStore):
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "aigw:cache:",
        op_timeout_s: float = 0.25,
        retry_interval_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._guard = RedisGuard(_warn, op_timeout_s, retry_interval_s)
        self.skipped_gets = 0  # reads answered as a miss because Redis failed or was being skipped
        self.dropped_sets = 0  # writes not stored because Redis failed or was being skipped

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        value = await self._guard.call(lambda: self._redis.get(self._key(key)))
        if value is not REDIS_DOWN:
            return value if isinstance(value, bytes) else None
        self.skipped_gets += 1
        return None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        done = await self._guard.call(lambda: self._redis.set(self._key(key), value, ex=ttl_s))
        if done is not REDIS_DOWN:
            return
        self.dropped_sets += 1


def _warn(exc: BaseException) -> None:
    log.warning("response cache: Redis unavailable (%r); serving uncached", exc)

"""The Redis response cache, shared by replicas: ``SET key value EX ttl`` and ``GET``.

Redis trouble never reaches the caller: a failed or slow call (``op_timeout_s`` bounds it) is a miss for ``get``
and a dropped write for ``set`` (counted in ``dropped_sets``), and marks Redis down for ``retry_interval_s`` so the
calls meanwhile skip it instead of paying a timeout each. The request is then simply served uncached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from aigw.state.cache_memory import PendingRead
from aigw.state.redis_calls import REDIS_DOWN, GuardedStore, RedisClient, RedisGuard
from aigw.state.resp import RespClient

__all__ = ["RedisCacheStore"]

log = logging.getLogger(__name__)


class RedisCacheStore(GuardedStore):
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "aigw:cache:",
        op_timeout_s: float | None = 0.25,  # None: the client bounds each command (factory.guard_timeout_s)
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

    def get_soon(self, key: str) -> PendingRead | None:
        """The GET queued on the lean client's connection in this turn, its reply read without a task (the
        admission's script leaves in the same write). Only where the client bounds its commands (its watchdog);
        not while Redis is being skipped (``get`` answers that without a round trip)."""
        client = self._redis
        if not isinstance(client, RespClient) or not self._guard.client_bounded or self._guard.degraded:
            return None
        reply = client.send_nowait("GET", self._key(key))
        return None if reply is None else _PendingGet(self, reply)

    def _missed(self, exc: BaseException) -> None:
        self.skipped_gets += 1
        self._guard.failed(exc)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Returns once the entry is on its way: with the lean client, when the SET has been written, not when
        Redis has answered (ADR 0010). A client reading the response this write precedes, then asking any replica,
        finds the entry: by then the SET has long been read by Redis (across connections Redis orders commands by
        when it reads them, so only a GET sent within microseconds of the SET, or a very large entry still crossing
        a slow link, could be overtaken; that GET is a miss, never a wrong answer)."""
        if ttl_s <= 0:
            return
        name = self._key(key)
        client = self._redis
        if isinstance(client, RespClient):
            sent = await self._guard.call(lambda: client.submit("SET", name, value, "EX", ttl_s))
            if sent is REDIS_DOWN:
                self.dropped_sets += 1
            else:
                sent.add_done_callback(self._stored)
            return
        done = await self._guard.call(lambda: self._redis.set(name, value, ex=ttl_s))
        if done is REDIS_DOWN:
            self.dropped_sets += 1

    def _stored(self, reply: asyncio.Future[Any]) -> None:
        """The SET's reply, after the response went out: a failure is counted as the awaited path counts it."""
        exc = None if reply.cancelled() else reply.exception()
        if reply.cancelled() or exc is not None:
            self.dropped_sets += 1
            self._guard.failed(exc if exc is not None else asyncio.CancelledError())


class _PendingGet:
    __slots__ = ("_reply", "_store")

    def __init__(self, store: RedisCacheStore, reply: asyncio.Future[Any]) -> None:
        self._store = store
        self._reply = reply

    async def value(self) -> bytes | None:
        try:
            value = await self._reply
        except (RedisError, OSError) as exc:  # what the client fails a command with (its timeout included)
            self._store._missed(exc)
            return None
        return value if isinstance(value, bytes) else None

    def cancel(self) -> None:
        reply = self._reply
        if not reply.done():
            reply.cancel()  # the client reads the reply and drops it
        elif not reply.cancelled() and (exc := reply.exception()) is not None:
            self._store._missed(exc)


def _warn(exc: BaseException) -> None:
    log.warning("response cache: Redis unavailable (%r); serving uncached", exc)

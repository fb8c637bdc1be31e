"""Key changes pushed between processes over Redis pub/sub, so a revocation on one replica is refused by all at once.

The admin API changes keys in the database and in its own process's cache, then publishes a notice. Every other
process applies a revocation straight from the notice (no database read: it works while PostgreSQL is slow or down)
and wakes its key sync to read any other change (new keys, new limits) now rather than at the next poll.

Pub/sub is fire-and-forget: a process that is disconnected when a notice goes out misses it. The periodic key sync
(``key_sync_interval_s``) stays as the backstop, so the worst case is the poll interval, as without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aigw.tenancy import KeyCache, KeySync

__all__ = ["CHANNEL", "KeyNotices"]

log = logging.getLogger(__name__)

CHANNEL = "aigw:key-changes"
RECONNECT_S = 1.0


class KeyNotices:
    def __init__(self, url: str, keys: KeyCache, sync: KeySync, *, timeout_s: float = 0.25) -> None:
        # Its own client: a subscribed connection blocks on reads, which the request-path client's short socket
        # timeout would turn into errors every quarter second.
        self._redis: Redis = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=None)
        self._publish_timeout_s = timeout_s
        self._keys = keys
        self._sync = sync
        self._origin = os.urandom(8).hex()  # our own notices come back to us: skip them
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False  # the subscription is live (else only the periodic sync sees changes)
        self.received = 0

    async def publish(self, *, revoked: Sequence[str] = (), deleted_tenant: str | None = None) -> None:
        """Tell the other processes; never raises (they still catch up with their periodic sync)."""
        message = orjson.dumps({"origin": self._origin, "revoked": list(revoked), "deleted_tenant": deleted_tenant})
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                await self._redis.publish(CHANNEL, message)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "could not publish a key change (%s); other processes pick it up by polling", type(exc).__name__
            )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="aigw-key-notices")

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.subscribed = True
                    # Anything published while we were not subscribed is only seen by a sync: run one now.
                    self._sync.wake()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._take(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("key-change subscription lost (%s); retrying, polling meanwhile", type(exc).__name__)
            self.subscribed = False
            await asyncio.sleep(RECONNECT_S)

    def _take(self, data: bytes) -> None:
        try:
            notice = orjson.loads(data)
            if notice.get("origin") == self._origin:
                return
            revoked = [str(k) for k in notice.get("revoked") or ()]
            deleted = notice.get("deleted_tenant")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            log.warning("ignored a malformed key-change notice")
            return
        self.received += 1
        if deleted:
            self._keys.delete_tenant(str(deleted), revoked)
        elif revoked:
            self._keys.revoke(revoked)
        self._sync.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

"""Redis plumbing shared by the Redis state stores: Lua scripts run by SHA, and a guard around each call.

``LuaScript`` is a script from ``aigw.state/lua`` with its SHA-1, run with ``EVALSHA`` and loaded on ``NOSCRIPT``.

``RedisGuard`` keeps Redis trouble from reaching the caller: a call that fails (or outlasts ``op_timeout_s``) is
counted in ``redis_errors``, logged (at most once per ``warn_interval_s``; with None, on the first failure and every
1000th), and answered with ``REDIS_DOWN``; for ``retry_interval_s`` afterwards (``degraded``) calls are not even tried,
so they do not each pay a timeout, and then Redis is tried again.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib.resources import files
from typing import Any, Final, Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from aigw.state.resp import RespClient

__all__ = ["REDIS_DOWN", "GuardedStore", "LuaScript", "RedisClient", "RedisDown", "RedisGuard"]

# redis-py's client (tests, pub/sub, TLS) or the lean request-path client (resp.py): the stores use what both have.
RedisClient = Redis | RespClient

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LuaScript:
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        source = files("aigw.state").joinpath("lua", name).read_text(encoding="utf-8")
        # EVALSHA names a script by the SHA-1 of its text: computed here, the server need not be asked.
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    async def eval(self, redis: RedisClient, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this server, or after a restart / SCRIPT FLUSH: load it once, then run it again.
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


class RedisDown(Enum):
    REDIS_DOWN = "redis down"


REDIS_DOWN: Final = RedisDown.REDIS_DOWN
"""What ``RedisGuard.call`` answers when Redis failed or is being skipped (a call's own result may be None)."""


class RedisGuard:
    def __init__(
        self,
        warn: Callable[[BaseException], None],
        op_timeout_s: float | None,
        retry_interval_s: float,
        warn_interval_s: float | None = None,
    ) -> None:
        self._warn = warn
        self._op_timeout_s = op_timeout_s
        self.retry_interval_s = retry_interval_s
        self._warn_interval_s = warn_interval_s
        self.redis_errors = 0
        self._skip_until = -math.inf  # monotonic: do not try Redis until then
        self._next_warning = -math.inf

    @property
    def degraded(self) -> bool:
        """True while calls skip Redis (after a recent failure)."""
        return time.monotonic() < self._skip_until

    @property
    def client_bounded(self) -> bool:
        """No timer of the guard's own: the client bounds each command (the lean client's watchdog), so a command
        may also be sent without awaiting it (``RespClient.send_nowait``)."""
        return self._op_timeout_s is None

    async def call(self, op: Callable[[], Awaitable[T]]) -> T | Literal[RedisDown.REDIS_DOWN]:
        if self.degraded:
            return REDIS_DOWN
        try:
            if self._op_timeout_s is None:  # the client bounds each command itself: no timer per call here
                return await op()
            async with asyncio.timeout(self._op_timeout_s):
                return await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
            return REDIS_DOWN

    def failed(self, exc: BaseException) -> None:
        """Count a failure and back off (also for a call whose outcome arrives later, like an unawaited SET)."""
        self.redis_errors += 1
        now = time.monotonic()
        self._skip_until = now + self.retry_interval_s
        if self._warn_interval_s is None:
            if self.redis_errors == 1 or self.redis_errors % 1000 == 0:
                self._warn(exc)
        elif now >= self._next_warning:
            self._next_warning = now + self._warn_interval_s
            self._warn(exc)


class GuardedStore:
    """Base of a store whose Redis calls go through ``self._guard``: exposes its counters."""

    _guard: RedisGuard

    @property
    def redis_errors(self) -> int:
        """Redis calls that failed (calls skipped during the back-off after a failure are not counted here)."""
        return self._guard.redis_errors

    @property
    def degraded(self) -> bool:
        """True while calls skip Redis (after a recent failure)."""
        return self._guard.degraded

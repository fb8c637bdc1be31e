"""The Redis rate-limit store: one sliding-window log per tenant, shared by every replica, changed only by Lua.

Each check or settle is ONE ``EVALSHA`` (loaded on ``NOSCRIPT``) of ``lua/limits_check.lua`` or
``lua/limits_settle.lua``, which run the rules of ``aigw.ratelimit`` with Redis ``TIME`` as the clock (replicas with
skewed clocks agree) and return what the ``x-ratelimit-*`` headers need in the same round trip. Keys
(``<prefix>{<tenant>}:r``, ``:t``, ``:h``) share a hash tag and expire two windows after the tenant's last write.

Redis trouble never reaches the caller. A failed or slow call (``op_timeout_s`` bounds it) marks Redis down for
``retry_interval_s`` (calls meanwhile skip it instead of paying a timeout each), then Redis is tried again.
While down, ``fail_open=True`` (default) decides with the ``fallback`` memory store — per-replica limits, logged and
counted in ``degraded_calls`` — and ``fail_open=False`` refuses every check with ``Verdict.reason`` set (counted in
``refused_unavailable``). Reservations from the fallback are tagged ``local`` and settled there; a Redis reservation
whose settle fails is dropped (its estimate stays charged until it leaves the window) and counted in
``dropped_settles``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import NoScriptError

from aigw.ratelimit import WINDOW_S, Reservation, Verdict, WindowState, decision
from aigw.state.limits_memory import MemoryLimitStore
from aigw.state.redis_calls import REDIS_DOWN, GuardedStore, LuaScript, RedisClient, RedisGuard
from aigw.state.resp import RespClient

__all__ = ["UNAVAILABLE", "RedisLimitStore"]

log = logging.getLogger(__name__)

UNAVAILABLE = "rate limiter unavailable"


def _num(value: Any) -> float | None:
    if isinstance(value, bytes):
        value = value.decode()
    return None if value in ("", None) else float(value)


class RedisLimitStore(GuardedStore):
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "aigw:rl:",
        fallback: MemoryLimitStore,
        fail_open: bool = True,
        clock: Callable[[], float] | None = None,
        window_s: float = WINDOW_S,
        op_timeout_s: float | None = 0.25,  # None: the client bounds each command (factory.guard_timeout_s)
        retry_interval_s: float = 1.0,
        warn_interval_s: float = 30.0,
    ) -> None:
        """``clock`` is for tests only: it replaces Redis TIME in the scripts (leave it None in production)."""
        self._redis = redis
        self._prefix = prefix
        self._fallback = fallback
        self.fail_open = fail_open
        self._clock = clock
        self.window_s = window_s
        self._ttl_s = math.ceil(2 * window_s)
        self._guard = RedisGuard(self._warn, op_timeout_s, retry_interval_s, warn_interval_s)
        self._check_script = LuaScript.load("limits_check.lua")
        self._settle_script = LuaScript.load("limits_settle.lua")
        self.degraded_calls = 0  # checks/settles answered locally because Redis failed or was being skipped
        self.refused_unavailable = 0  # checks refused because Redis was down and fail_open is False
        self.dropped_settles = 0  # Redis reservations that could not be settled
        self._retries: set[asyncio.Task[None]] = set()  # settles sent again after NOSCRIPT (kept referenced)

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        base = f"{self._prefix}{{{tenant}}}:"
        return base + "r", base + "t", base + "h"

    async def check(self, tenant: str, rpm: int | None, tpm: int | None, tokens_estimate: int) -> Verdict:
        estimate = max(0, tokens_estimate)
        if rpm is None and tpm is None:
            return Verdict(True, None, None, Reservation(tenant, None, 0))

        def run() -> Awaitable[Any]:
            args = (self._now(), _limit(rpm), _limit(tpm), estimate, repr(self.window_s), self._ttl_s)
            return self._check_script.eval(self._redis, self._keys(tenant), args)

        reply = await self._guard.call(run)
        if reply is not REDIS_DOWN:
            return self._verdict(tenant, rpm, tpm, estimate, reply)
        if not self.fail_open:
            self.refused_unavailable += 1
            return Verdict(False, None, None, None, UNAVAILABLE)
        self.degraded_calls += 1
        verdict = await self._fallback.check(tenant, rpm, tpm, estimate)
        if verdict.reservation is None:
            return verdict
        local = Reservation(tenant, verdict.reservation.entry, verdict.reservation.reserved, local=True)
        return Verdict(verdict.allowed, verdict.requests, verdict.tokens, local)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if reservation.local:
            await self._fallback.settle(reservation, actual_tokens)
            return
        if reservation.entry is None:
            return
        entry = reservation.entry

        def run() -> Awaitable[Any]:
            _, tokens_key, hash_key = self._keys(reservation.tenant)
            args = (self._now(), entry, max(0, actual_tokens), repr(self.window_s), self._ttl_s)
            return self._settle_script.eval(self._redis, (tokens_key, hash_key), args)

        done = await self._guard.call(run)
        if done is not REDIS_DOWN:
            return
        self.dropped_settles += 1

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> bool:
        """The settle queued on the lean client's connection in this turn (it leaves with the turn's other commands,
        the cache store's SET among them); its reply is handled by a callback. Otherwise False: await settle()."""
        if reservation.local:
            return self._fallback.settle_soon(reservation, actual_tokens)
        if reservation.entry is None:
            return True
        client = self._redis
        if not isinstance(client, RespClient) or not self._guard.client_bounded or self._guard.degraded:
            return False
        _, tokens_key, hash_key = self._keys(reservation.tenant)
        args = (self._now(), reservation.entry, max(0, actual_tokens), repr(self.window_s), self._ttl_s)
        reply = client.send_nowait("EVALSHA", self._settle_script.sha, 2, tokens_key, hash_key, *args)
        if reply is None:
            return False
        reply.add_done_callback(lambda done: self._settled(done, reservation, actual_tokens))
        return True

    def _settled(self, reply: asyncio.Future[Any], reservation: Reservation, actual_tokens: int) -> None:
        exc = asyncio.CancelledError() if reply.cancelled() else reply.exception()
        if exc is None:
            return
        if isinstance(exc, NoScriptError):  # the server lost its scripts (restart, SCRIPT FLUSH): load and retry
            task = asyncio.get_running_loop().create_task(self.settle(reservation, actual_tokens))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        self._guard.failed(exc)
        self.dropped_settles += 1

    def _verdict(self, tenant: str, rpm: int | None, tpm: int | None, estimate: int, reply: Any) -> Verdict:
        ok, entry, now_s, r_used, r_free, r_newest, t_used, t_free, t_newest = reply
        admitted, now = bool(int(ok)), _num(now_s) or 0.0
        requests = tokens = None
        if rpm is not None:
            state = WindowState(int(r_used), _num(r_free), _num(r_newest))
            requests = decision(rpm, state, 1, admitted, now, self.window_s)
        if tpm is not None:
            state = WindowState(int(t_used), _num(t_free), _num(t_newest))
            tokens = decision(tpm, state, estimate, admitted, now, self.window_s)
        reservation = None
        if admitted:
            reservation = Reservation(tenant, int(entry) if tpm is not None else None, estimate)
        return Verdict(admitted, requests, tokens, reservation)

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    def _warn(self, exc: BaseException) -> None:
        log.warning(
            "rate limiter: Redis unavailable (%r); %s, retrying every %.1f s",
            exc,
            "deciding with this replica's local limits" if self.fail_open else "refusing requests (fail-closed)",
            self._guard.retry_interval_s,
        )


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)

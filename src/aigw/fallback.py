"""Run a request along its chain of targets: skip open circuits, retry a target with jittered exponential
back-off (honouring retry-after), fall back on failures that the contract says fall back, stop at once on the
client's own errors, and never run past the request's deadline.

The fallback rule itself is ``UpstreamError.falls_back`` (errors.py): this module only applies it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aigw.breaker import Outcome, Permit
from aigw.errors import AllTargetsFailed, CircuitOpen, UpstreamError, UpstreamTimeout
from aigw.providers.transport import Upstream
from aigw.routing import Target
from aigw.state import BreakerStore

T = TypeVar("T")

BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 4.0


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    value: T
    target: Target
    attempts: int  # distinct targets called (x-aigw-attempts)
    permit: Permit | None = None  # still held when the caller settles the verdict itself (a committed stream)


class ChainFailed(Exception):
    """Carries the error to report and how many targets were called, for the response headers."""

    def __init__(self, error: UpstreamError, attempts: int, target: Target | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.target = target  # the target that produced a client error (non-fallback), if any


def backoff_s(retry: int, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential back-off; an upstream's retry-after is a floor, not a suggestion."""
    delay = rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**retry))
    return max(delay, retry_after or 0.0)


class Chain:
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        breaker: BreakerStore,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._breaker = breaker
        self._rng = rng or random.Random()

    async def run(
        self,
        targets: Sequence[Target],
        deadline: float,
        call: Callable[[Target, Upstream], Awaitable[T]],
        *,
        hold_on_success: bool = False,
    ) -> Served[T]:
        """``hold_on_success``: a stream is only judged when it ends (a provider that breaks every stream after
        its first chunk must still open its circuit), so the caller gets the permit and releases it then."""
        loop = asyncio.get_running_loop()
        failures: list[tuple[str, UpstreamError]] = []
        called = 0
        for target in targets:
            upstream = self._upstreams[target.provider]
            tried = False
            for retry in range(target.retries + 1):
                permit = await self._breaker.acquire(target.key)
                if permit is None:
                    failures.append((target.key, CircuitOpen(f"{target.key} skipped: circuit open")))
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    await self._breaker.release(permit, Outcome.NEUTRAL)
                    failures.append((target.key, UpstreamTimeout("request deadline reached before trying it")))
                    raise ChainFailed(AllTargetsFailed(failures), called, None)
                if not tried:
                    tried, called = True, called + 1
                try:
                    if remaining >= upstream.attempt_bound_s:
                        value = await call(target, upstream)  # its own timeouts end it before the deadline
                    else:
                        try:
                            async with asyncio.timeout(remaining):
                                value = await call(target, upstream)
                        except TimeoutError:
                            raise UpstreamTimeout(
                                f"request deadline reached while waiting for {target.provider}",
                                provider=target.provider,
                            ) from None
                except UpstreamError as err:
                    if not err.falls_back:  # the client's request is at fault: no verdict on the target
                        await self._breaker.release(permit, Outcome.NEUTRAL)
                        raise ChainFailed(err, called, target) from None
                    await self._breaker.release(permit, Outcome.FAILURE, err.message)
                    failures.append((target.key, err))
                    if retry < target.retries:
                        delay = backoff_s(retry, err.retry_after, self._rng)
                        if loop.time() + delay >= deadline:
                            break  # no time left to retry here; the next target may still fit
                        await asyncio.sleep(delay)
                    continue
                except BaseException:  # cancelled (the client left) or a bug: release the permit, no verdict
                    await asyncio.shield(self._breaker.release(permit, Outcome.NEUTRAL))
                    raise
                if hold_on_success:
                    return Served(value, target, called, permit)
                await self._breaker.release(permit, Outcome.SUCCESS)
                return Served(value, target, called)
        raise ChainFailed(AllTargetsFailed(failures), called, None)

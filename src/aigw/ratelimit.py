"""Per-tenant rate limits: requests/min and tokens/min over a rolling 60 s window (pure: the clock is passed in).

Algorithm: an exact **sliding-window log** for both dimensions (GCRA was rejected: with burst N it admits N at once
and then one more every 60/N s, so N+1 requests can land inside one rolling 60 s — the contract forbids that).

* Requests: the log holds the admission times still inside the window; an entry at ``t`` counts while
  ``now < t + 60``. The request is admitted iff fewer than ``rpm`` entries are live, so the N+1-th request within any
  rolling 60 s is refused, wherever the clock minute falls. Memory per tenant: at most ``rpm`` timestamps.
* Tokens: the log holds ``(time, tokens)`` entries. ``check`` **reserves** the caller's estimate as a new entry;
  ``settle`` replaces it by the actual usage (a refund or an extra charge, at the entry's original time). A request
  is refused before the call iff the window already holds tokens and ``used + estimate > tpm``; a request alone in
  an empty window is admitted whatever its estimate (otherwise a large request could never pass), and a settled
  charge may exceed the limit ("one request may overshoot"). If the reservation has left the window by the time it
  is settled (a call longer than 60 s), the actual usage is charged at the settle time instead, so it is not lost.
* Both dimensions are decided together: nothing is charged unless both admit. ``None`` means unlimited (that
  dimension is neither checked nor recorded, and its ``Decision`` is ``None``).

``Decision`` per dimension carries what the ``x-ratelimit-*`` headers need: ``remaining`` after this request's
charge when admitted (the refused dimension reports 0; a dimension that would have admitted a refused request
reports its current, uncharged remaining), ``reset_s`` = seconds until the window is empty again (OpenAI's meaning:
"until the limit resets to its initial state") and ``retry_after_s`` = seconds until this same request would be
admitted by that dimension (None when it admits). ``retry_after_header`` turns that into the integer 1-60.

``Verdict.reason`` is set only when a store refused without deciding (Redis down, fail-closed).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "WINDOW_S",
    "Decision",
    "LimitStore",
    "RateLimiter",
    "Reservation",
    "Verdict",
    "WindowState",
    "decision",
    "retry_after_header",
]

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``settle`` needs: the tenant, the token-log entry (``entry`` None = tokens unlimited, nothing to settle),
    the reserved estimate, and whether the fallback store (not Redis) holds it."""

    tenant: str
    entry: int | None
    reserved: int
    local: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    requests: Decision | None
    tokens: Decision | None
    reservation: Reservation | None  # set iff allowed
    reason: str | None = None  # why a store refused without deciding (e.g. "rate limiter unavailable")

    @property
    def retry_after_s(self) -> float | None:
        """Seconds until this request would be admitted; None when admitted. 1.0 when no dimension says."""
        if self.allowed:
            return None
        waits = [d.retry_after_s for d in (self.requests, self.tokens) if d is not None and d.retry_after_s]
        return max(waits) if waits else 1.0


def retry_after_header(seconds: float | None) -> int:
    """The integer ``Retry-After`` the contract asks for: rounded up, clamped to 1-60."""
    return min(60, max(1, math.ceil(seconds or 0.0)))


@dataclass(frozen=True, slots=True)
class WindowState:
    """One dimension before the charge: ``used`` requests/tokens in the window, ``free_at`` = when this request
    would fit (None = fits now), ``newest`` = time of the newest live entry (None = empty window)."""

    used: int
    free_at: float | None
    newest: float | None


def decision(
    limit: int, state: WindowState, cost: int, admitted: bool, now: float, window: float = WINDOW_S
) -> Decision:
    """The headers' view of one dimension (shared by the memory and Redis stores, so they report alike)."""
    if admitted:
        return Decision(True, limit, max(0, limit - state.used - cost), window, None)
    reset = 0.0 if state.newest is None else max(0.0, state.newest + window - now)
    if state.free_at is None:
        return Decision(True, limit, max(0, limit - state.used), reset, None)
    return Decision(False, limit, 0, reset, max(0.0, state.free_at - now))


class LimitStore(Protocol):
    """Rate-limit state per tenant. Implementations never raise on backend trouble."""

    async def check(self, tenant: str, rpm: int | None, tpm: int | None, tokens_estimate: int) -> Verdict:
        """Decide both dimensions atomically; when admitted, count the request and reserve the estimate."""
        ...

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reserved estimate by the tokens the upstream reported (refund or extra charge)."""
        ...

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> bool:
        """``settle`` without awaiting, when the store can: True if done or on its way (its outcome is handled as
        ``settle`` handles it); False if nothing was done and ``settle`` must be awaited instead."""
        ...


@dataclass(slots=True)
class _TenantLog:
    requests: deque[float] = field(default_factory=deque)  # admission times, oldest first
    # Token entries [time, tokens, entry id], oldest first, plus an index by id for settle. (A deque, not an
    # insertion-ordered dict: popping a dict's front leaves dead slots that every later front lookup must skip.)
    tokens: deque[list[float]] = field(default_factory=deque)
    index: dict[int, list[float]] = field(default_factory=dict)
    used: int = 0  # sum of the token entries

    def trim(self, now: float, window: float) -> None:
        cutoff = now - window  # an entry at exactly now - window has left the window
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        tokens = self.tokens
        while tokens and tokens[0][0] <= cutoff:
            _at, amount, entry = tokens.popleft()
            del self.index[int(entry)]
            self.used -= int(amount)
        if not tokens:
            self.used = 0


class RateLimiter:
    """The in-process limiter. Not thread-safe; nothing awaits, so it is atomic on one event loop."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._logs: dict[str, _TenantLog] = {}
        self._next_entry = 0

    def __len__(self) -> int:
        return len(self._logs)

    def check(self, tenant: str, rpm: int | None, tpm: int | None, tokens_estimate: int, now: float) -> Verdict:
        estimate = max(0, tokens_estimate)
        if rpm is None and tpm is None:
            return Verdict(True, None, None, Reservation(tenant, None, 0))
        log = self._logs.get(tenant)
        if log is None:
            log = self._logs[tenant] = _TenantLog()
        log.trim(now, self.window_s)
        rstate = self._request_state(log, rpm) if rpm is not None else None
        tstate = self._token_state(log, tpm, estimate) if tpm is not None else None
        admitted = all(s.free_at is None for s in (rstate, tstate) if s is not None)
        entry: int | None = None
        if admitted:
            if rpm is not None:
                log.requests.append(now)
            if tpm is not None:
                entry = self._add(log, now, estimate)
        requests = None if rstate is None or rpm is None else decision(rpm, rstate, 1, admitted, now, self.window_s)
        tokens = (
            None if tstate is None or tpm is None else decision(tpm, tstate, estimate, admitted, now, self.window_s)
        )
        return Verdict(admitted, requests, tokens, Reservation(tenant, entry, estimate) if admitted else None)

    def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        if reservation.entry is None:
            return
        actual = max(0, actual_tokens)
        log = self._logs.get(reservation.tenant)
        if log is None:
            log = self._logs[reservation.tenant] = _TenantLog()
        log.trim(now, self.window_s)
        held = log.index.get(reservation.entry)
        if held is not None:
            log.used += actual - int(held[1])
            held[1] = actual  # same place in the log: same expiry
        else:
            self._add(log, now, actual)  # the reservation already left the window: charge the usage now

    def sweep(self, now: float) -> int:
        """Forget tenants whose logs are empty (idle for a window); returns how many were dropped."""
        idle = []
        for tenant, log in self._logs.items():
            log.trim(now, self.window_s)
            if not log.requests and not log.tokens:
                idle.append(tenant)
        for tenant in idle:
            del self._logs[tenant]
        return len(idle)

    def _add(self, log: _TenantLog, now: float, amount: int) -> int:
        self._next_entry += 1
        item = [now, amount, self._next_entry]
        log.tokens.append(item)
        log.index[self._next_entry] = item
        log.used += amount
        return self._next_entry

    def _request_state(self, log: _TenantLog, rpm: int) -> WindowState:
        count = len(log.requests)
        newest = log.requests[-1] if log.requests else None
        # Refused: count - rpm + 1 entries must leave first; the last of them is the (count - rpm)-th oldest.
        free_at = None if count < rpm else log.requests[count - rpm] + self.window_s
        return WindowState(count, free_at, newest)

    def _token_state(self, log: _TenantLog, tpm: int, estimate: int) -> WindowState:
        used = log.used
        newest = log.tokens[-1][0] if log.tokens else None
        if used == 0 or used + estimate <= tpm:
            return WindowState(used, None, newest)
        left = used
        free_at = None
        for at, amount, _entry in log.tokens:  # oldest first: find when enough has left the window
            left -= int(amount)
            if left <= 0 or left + estimate <= tpm:
                free_at = at + self.window_s
                break
        return WindowState(used, free_at, newest)

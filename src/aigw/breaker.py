"""Circuit breaker: the per-target state machine, pure (no I/O, no asyncio, no clock: ``now`` is passed in).

A target is a provider plus upstream model (``Target.key``). The in-process store (``aigw.state.breaker_memory``)
drives ``CircuitBreaker`` with a real clock; the Redis store runs the same rules as Lua scripts
(``aigw/state/lua/breaker_*.lua``) and shares the helpers below. One test suite checks both against each other.

Rules
- closed: every acquire is allowed. A FAILURE adds to the consecutive failures and a SUCCESS resets them; reaching
  ``failure_threshold`` opens the circuit. With ``failure_rate`` set, a FAILURE also opens it when the rolling window
  holds at least ``min_requests`` verdicts and failures / requests >= ``failure_rate``. The rate is checked on
  failures only: a success never opens a circuit.
- open: acquires return None until ``cooldown_s`` after ``opened_at``; the first acquire after that moves the target
  to half_open and holds the trial permit.
- half_open: one trial at a time, every other acquire returns None. Trial SUCCESS closes (counters and window
  reset), FAILURE re-opens (``opened_at`` = now), NEUTRAL frees the slot and stays half_open. A trial not released
  within ``trial_lease_s`` (its holder died) frees the slot for the next acquire; until someone takes it, the late
  holder's verdict still counts.
- NEUTRAL (a client's 400, a cancelled attempt) is no verdict: it never counts anywhere.

Stragglers. Each target has an ``epoch`` that moves on every transition and every trial grant, and a permit carries
the epoch it was granted in. A release counts as *current* only if it is the trial of the running half-open epoch, or
a plain permit of the running closed epoch. Anything else is a straggler, granted before the state moved on:
- while open or half_open, a straggler FAILURE is counted (consecutive failures, window, last error) but moves
  nothing: ``opened_at`` is not pushed back, so stragglers cannot extend the cooldown. A straggler SUCCESS is counted
  in the window only: it neither closes the circuit nor resets the failure count (only a trial speaks for the target).
- once the circuit has closed again, stragglers from before are ignored entirely: the trial's success is newer
  evidence, and a burst of old failures must not reopen a target that just recovered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

WINDOW_BUCKETS = 10  # the rolling window is this many time buckets: it covers the last 90-100% of window_s
MAX_ERROR_CHARS = 200
MAX_TARGETS = 10_000  # clients may name any ``provider/model``: bound what they can make us remember
_EVICTION_SCAN = 32


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"  # e.g. a 400 the client caused, or a cancelled attempt: no verdict on the target


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open a closed target
    cooldown_s: float = 30.0  # open -> half-open after this
    failure_rate: float | None = None  # also open when failures/requests over the window >= this (0<r<=1) ...
    window_s: float = 60.0  # ... over this rolling window ...
    min_requests: int = 20  # ... once at least this many requests were seen in it
    trial_lease_s: float = 120.0  # a half-open trial not released within this (its holder died) frees the slot

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_requests < 1:
            raise ValueError("min_requests must be >= 1")
        if min(self.cooldown_s, self.window_s, self.trial_lease_s) <= 0:
            raise ValueError("cooldown_s, window_s and trial_lease_s must be > 0")

    @property
    def bucket_s(self) -> float:
        return self.window_s / WINDOW_BUCKETS


@dataclass(frozen=True, slots=True)
class Permit:
    """What acquire() hands out; release() takes it back."""

    key: str
    trial: bool  # True if this is the half-open trial
    epoch: int = 0  # the target's epoch when granted: tells current verdicts from stragglers
    local: bool = False  # issued by in-process state (the memory store, or the Redis store's fallback)
    # Granted while closed with no consecutive failures: a hint (the Redis store batches such successes), not identity.
    clean: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """One target's circuit, for GET /admin/providers."""

    key: str
    state: CircuitState
    consecutive_failures: int
    last_error: str | None
    opened_at: float | None  # epoch seconds of the last transition to open
    window_requests: int
    window_failures: int


Transition = Callable[[str, CircuitState, CircuitState], None]  # (key, from, to); must not raise


def bucket_index(now: float, policy: BreakerPolicy) -> int:
    """The window bucket ``now`` falls in (the Lua scripts compute the same floor)."""
    return math.floor(now / policy.bucket_s)


def window_totals(buckets: Iterable[tuple[int, int, int]], current: int) -> tuple[int, int]:
    """(requests, failures) summed over ``(bucket index, requests, failures)`` still inside the window that ends
    with bucket ``current``; older buckets are stale slots of the ring and count for nothing."""
    requests = failures = 0
    oldest = current - WINDOW_BUCKETS
    for index, r, f in buckets:
        if oldest < index <= current:
            requests += r
            failures += f
    return requests, failures


def rate_trips(policy: BreakerPolicy, requests: int, failures: int) -> bool:
    rate = policy.failure_rate
    # A division, not failures >= rate * requests, so Lua (doubles too) decides identically.
    return rate is not None and requests >= policy.min_requests and failures / requests >= rate


def truncate_error(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 1] + "…"


def closed_health(key: str) -> TargetHealth:
    """A target never seen (or forgotten): closed, nothing counted."""
    return TargetHealth(key, CircuitState.CLOSED, 0, None, None, 0, 0)


_NO_BUCKET = -(2**62)


@dataclass(slots=True)
class _Target:
    state: CircuitState = CircuitState.CLOSED
    epoch: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    opened_at: float = 0.0  # meaningful once the target has opened (``has_opened``)
    has_opened: bool = False
    trial_until: float | None = None  # lease deadline of the trial in flight; None: the slot is free
    # The window as a ring of buckets: slot = bucket index mod WINDOW_BUCKETS.
    bucket_ids: list[int] = field(default_factory=lambda: [_NO_BUCKET] * WINDOW_BUCKETS)
    bucket_requests: list[int] = field(default_factory=lambda: [0] * WINDOW_BUCKETS)
    bucket_failures: list[int] = field(default_factory=lambda: [0] * WINDOW_BUCKETS)

    def count(self, index: int, failed: bool) -> None:
        slot = index % WINDOW_BUCKETS
        if self.bucket_ids[slot] != index:  # the slot holds an expired bucket: recycle it
            self.bucket_ids[slot] = index
            self.bucket_requests[slot] = 0
            self.bucket_failures[slot] = 0
        self.bucket_requests[slot] += 1
        if failed:
            self.bucket_failures[slot] += 1

    def totals(self, index: int) -> tuple[int, int]:
        return window_totals(zip(self.bucket_ids, self.bucket_requests, self.bucket_failures, strict=True), index)

    def clear_window(self) -> None:
        self.bucket_ids[:] = [_NO_BUCKET] * WINDOW_BUCKETS


class CircuitBreaker:
    """Every target's circuit, in process memory. Not thread-safe: one event loop owns it (no call awaits)."""

    def __init__(
        self, policy: BreakerPolicy, *, on_transition: Transition | None = None, max_targets: int = MAX_TARGETS
    ) -> None:
        self.policy = policy
        self._on_transition = on_transition
        self._max_targets = max_targets
        self._targets: dict[str, _Target] = {}

    def acquire(self, key: str, now: float) -> Permit | None:
        """A permit to call the target, or None to skip it."""
        t = self._targets.get(key)
        if t is None:  # never failed: nothing to remember until a verdict arrives
            return Permit(key, False, 0, True)
        if t.state is CircuitState.CLOSED:
            return Permit(key, False, t.epoch, True)
        if t.state is CircuitState.OPEN:
            if now < t.opened_at + self.policy.cooldown_s:
                return None
            self._move(key, t, CircuitState.HALF_OPEN)
        elif t.trial_until is not None and now < t.trial_until:
            return None  # half-open, and the trial's holder still has its lease
        else:
            t.epoch += 1  # a new trial: the previous holder (if its lease ran out) becomes a straggler
        t.trial_until = now + self.policy.trial_lease_s
        return Permit(key, True, t.epoch, True)

    def release(self, permit: Permit, outcome: Outcome, now: float, error: str | None = None) -> None:
        """Record the outcome of a call made under ``permit`` (see the module docstring for stragglers)."""
        key = permit.key
        t = self._targets.get(key)
        if t is None:
            if outcome is Outcome.NEUTRAL or permit.epoch != 0:
                return  # no verdict, or a straggler of a forgotten target
            t = self._add(key)
        if permit.epoch != t.epoch:
            current = False
        elif permit.trial:
            current = t.state is CircuitState.HALF_OPEN and t.trial_until is not None
        else:
            current = t.state is CircuitState.CLOSED
        if outcome is Outcome.NEUTRAL:
            if current and permit.trial:
                t.trial_until = None  # no verdict: the next acquire becomes the trial
            return
        if not current and t.state is CircuitState.CLOSED:
            return  # a straggler from before the target recovered
        failed = outcome is Outcome.FAILURE
        index = bucket_index(now, self.policy)
        t.count(index, failed)
        if failed:
            t.consecutive_failures += 1
            t.last_error = truncate_error(error)
        if not current:
            return
        if permit.trial:
            if failed:
                self._open(key, t, now)
            else:
                self._move(key, t, CircuitState.CLOSED)
                t.consecutive_failures = 0
                t.trial_until = None
                t.clear_window()
        elif not failed:
            t.consecutive_failures = 0
        elif t.consecutive_failures >= self.policy.failure_threshold or (
            self.policy.failure_rate is not None and rate_trips(self.policy, *t.totals(index))
        ):
            self._open(key, t, now)

    def health(self, key: str, now: float) -> TargetHealth:
        t = self._targets.get(key)
        if t is None:
            return closed_health(key)
        requests, failures = t.totals(bucket_index(now, self.policy))
        opened_at = t.opened_at if t.has_opened else None
        return TargetHealth(key, t.state, t.consecutive_failures, t.last_error, opened_at, requests, failures)

    def __len__(self) -> int:
        return len(self._targets)

    def _open(self, key: str, t: _Target, now: float) -> None:
        self._move(key, t, CircuitState.OPEN)
        t.opened_at = now
        t.has_opened = True
        t.trial_until = None

    def _move(self, key: str, t: _Target, to: CircuitState) -> None:
        before = t.state
        t.state = to
        t.epoch += 1
        if self._on_transition is not None:
            self._on_transition(key, before, to)

    def _add(self, key: str) -> _Target:
        if len(self._targets) >= self._max_targets:
            self._evict()
        t = self._targets[key] = _Target()
        return t

    def _evict(self) -> None:
        # Oldest first (dict order is insertion order), preferring a closed target: forgetting an open one would
        # send traffic to a failing provider. Only reachable when clients name thousands of distinct models.
        victim = next(iter(self._targets))
        for i, (key, t) in enumerate(self._targets.items()):
            if t.state is CircuitState.CLOSED:
                victim = key
                break
            if i >= _EVICTION_SCAN:
                break
        del self._targets[victim]

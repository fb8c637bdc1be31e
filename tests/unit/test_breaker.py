"""The pure circuit-breaker state machine (aigw.breaker), driven with explicit times: no clock, no sleeps."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aigw.breaker import (
    MAX_ERROR_CHARS,
    WINDOW_BUCKETS,
    BreakerPolicy,
    CircuitBreaker,
    CircuitState,
    Outcome,
    Permit,
    bucket_index,
    rate_trips,
    truncate_error,
    window_totals,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
OK, FAIL, NEUTRAL = Outcome.SUCCESS, Outcome.FAILURE, Outcome.NEUTRAL
T0 = 1_700_000_000.0
K = "openai/gpt-4o"

Moves = list[tuple[str, CircuitState, CircuitState]]


POLICY = BreakerPolicy(failure_threshold=3, cooldown_s=30.0, trial_lease_s=120.0)


def machine(policy: BreakerPolicy = POLICY) -> tuple[CircuitBreaker, Moves]:
    moves: Moves = []
    cb = CircuitBreaker(policy, on_transition=lambda key, a, b: moves.append((key, a, b)))
    return cb, moves


def call(cb: CircuitBreaker, now: float, outcome: Outcome, error: str | None = None, key: str = K) -> Permit:
    permit = cb.acquire(key, now)
    assert permit is not None, "expected the target to be callable"
    cb.release(permit, outcome, now, error)
    return permit


def open_at(cb: CircuitBreaker, now: float, key: str = K) -> None:
    for _ in range(cb.policy.failure_threshold):
        call(cb, now, FAIL, "upstream 503", key)
    assert cb.health(key, now).state is OPEN


def trial(cb: CircuitBreaker, now: float) -> Permit:
    permit = cb.acquire(K, now)
    assert permit is not None and permit.trial
    return permit


# -- closed ----------------------------------------------------------------------------------------------------


def test_closed_allows_every_call_and_remembers_nothing_until_a_verdict() -> None:
    cb, moves = machine()
    permits = [cb.acquire(K, T0) for _ in range(5)]
    assert all(p == Permit(K, False, 0, True) for p in permits)
    assert len(cb) == 0
    assert cb.health(K, T0) == cb.health(K, T0 + 1e6)
    assert cb.health(K, T0).state is CLOSED and moves == []


def test_opens_after_threshold_consecutive_failures() -> None:
    cb, moves = machine()
    call(cb, T0, FAIL, "e1")
    call(cb, T0 + 1, FAIL, "e2")
    assert cb.health(K, T0 + 1).state is CLOSED
    call(cb, T0 + 2, FAIL, "e3")
    h = cb.health(K, T0 + 2)
    assert (h.state, h.consecutive_failures, h.last_error, h.opened_at) == (OPEN, 3, "e3", T0 + 2)
    assert (h.window_requests, h.window_failures) == (3, 3)
    assert moves == [(K, CLOSED, OPEN)]
    assert cb.acquire(K, T0 + 2) is None


def test_success_resets_consecutive_failures() -> None:
    cb, _ = machine()
    for _ in range(2):
        call(cb, T0, FAIL)
    call(cb, T0, OK)
    assert cb.health(K, T0).consecutive_failures == 0
    for _ in range(2):
        call(cb, T0, FAIL)
    assert cb.health(K, T0).state is CLOSED


def test_neutral_is_no_verdict() -> None:
    cb, _ = machine()
    for _ in range(2):
        call(cb, T0, FAIL, "real")
    for _ in range(10):
        call(cb, T0, NEUTRAL, "client's fault")
    h = cb.health(K, T0)
    assert (h.state, h.consecutive_failures, h.last_error, h.window_requests) == (CLOSED, 2, "real", 2)
    call(cb, T0, FAIL)
    assert cb.health(K, T0).state is OPEN


def test_targets_are_independent() -> None:
    cb, _ = machine()
    open_at(cb, T0)
    assert cb.acquire("anthropic/claude", T0) is not None


# -- open, half-open -------------------------------------------------------------------------------------------


def test_open_skips_until_cooldown_then_one_trial() -> None:
    cb, moves = machine()
    open_at(cb, T0)
    assert cb.acquire(K, T0 + 29.999) is None
    assert cb.health(K, T0 + 29.999).state is OPEN
    permit = trial(cb, T0 + 30)
    assert moves[-1] == (K, OPEN, HALF_OPEN)
    assert [cb.acquire(K, T0 + 30 + i) for i in range(20)] == [None] * 20
    assert cb.health(K, T0 + 31).state is HALF_OPEN
    assert permit.epoch > 0


def test_trial_success_closes_and_resets() -> None:
    cb, moves = machine()
    open_at(cb, T0)
    cb.release(trial(cb, T0 + 30), OK, T0 + 31)
    h = cb.health(K, T0 + 31)
    assert (h.state, h.consecutive_failures, h.window_requests, h.window_failures) == (CLOSED, 0, 0, 0)
    assert (h.last_error, h.opened_at) == ("upstream 503", T0)  # history for operators
    assert moves == [(K, CLOSED, OPEN), (K, OPEN, HALF_OPEN), (K, HALF_OPEN, CLOSED)]
    permit = cb.acquire(K, T0 + 31)
    assert permit is not None and not permit.trial


def test_trial_failure_reopens_with_a_fresh_cooldown() -> None:
    cb, moves = machine()
    open_at(cb, T0)
    cb.release(trial(cb, T0 + 30), FAIL, T0 + 35, "still down")
    h = cb.health(K, T0 + 35)
    assert (h.state, h.opened_at, h.consecutive_failures, h.last_error) == (OPEN, T0 + 35, 4, "still down")
    assert moves[-1] == (K, HALF_OPEN, OPEN)
    assert cb.acquire(K, T0 + 64.9) is None
    assert trial(cb, T0 + 65)


def test_neutral_trial_frees_the_slot_and_stays_half_open() -> None:
    cb, moves = machine()
    open_at(cb, T0)
    first = trial(cb, T0 + 30)
    cb.release(first, NEUTRAL, T0 + 31)
    assert cb.health(K, T0 + 31).state is HALF_OPEN
    second = trial(cb, T0 + 31)
    assert second.epoch != first.epoch
    assert cb.acquire(K, T0 + 31) is None
    assert moves[-1] == (K, OPEN, HALF_OPEN) and len(moves) == 2


def test_trial_lease_expiry_frees_the_slot_and_the_old_holder_becomes_a_straggler() -> None:
    cb, moves = machine()
    open_at(cb, T0)
    lost = trial(cb, T0 + 30)
    assert cb.acquire(K, T0 + 149.9) is None
    replacement = trial(cb, T0 + 150)
    cb.release(lost, OK, T0 + 151)  # too late: another trial holds the slot now
    assert cb.health(K, T0 + 151).state is HALF_OPEN
    cb.release(lost, FAIL, T0 + 151)
    assert cb.health(K, T0 + 151).state is HALF_OPEN
    cb.release(replacement, OK, T0 + 152)
    assert cb.health(K, T0 + 152).state is CLOSED
    assert [m[2] for m in moves] == [OPEN, HALF_OPEN, CLOSED]


def test_expired_trial_still_counts_until_someone_takes_the_slot() -> None:
    cb, _ = machine()
    open_at(cb, T0)
    late = trial(cb, T0 + 30)
    cb.release(late, OK, T0 + 500)
    assert cb.health(K, T0 + 500).state is CLOSED


# -- stragglers ------------------------------------------------------------------------------------------------


def test_straggler_success_while_open_does_not_close() -> None:
    cb, moves = machine()
    slow = cb.acquire(K, T0)
    assert slow is not None
    open_at(cb, T0 + 1)
    cb.release(slow, OK, T0 + 2)
    h = cb.health(K, T0 + 2)
    assert (h.state, h.consecutive_failures, h.window_requests) == (OPEN, 3, 4)
    assert cb.acquire(K, T0 + 2) is None and len(moves) == 1


def test_straggler_failure_while_open_counts_but_does_not_extend_the_cooldown() -> None:
    cb, moves = machine()
    slow = [cb.acquire(K, T0) for _ in range(3)]
    open_at(cb, T0 + 1)
    for p in slow:
        assert p is not None
        cb.release(p, FAIL, T0 + 20, "slow failure")
    h = cb.health(K, T0 + 20)
    assert (h.state, h.opened_at, h.consecutive_failures, h.last_error, h.window_failures) == (
        OPEN,
        T0 + 1,
        6,
        "slow failure",
        6,
    )
    assert trial(cb, T0 + 31)  # cooldown counted from the original opening
    assert len(moves) == 2


def test_stragglers_while_half_open_do_not_decide() -> None:
    cb, _ = machine()
    slow_ok, slow_fail = cb.acquire(K, T0), cb.acquire(K, T0)
    assert slow_ok is not None and slow_fail is not None
    open_at(cb, T0 + 1)
    the_trial = trial(cb, T0 + 31)
    cb.release(slow_ok, OK, T0 + 32)
    assert cb.health(K, T0 + 32).state is HALF_OPEN
    cb.release(slow_fail, FAIL, T0 + 32)
    assert cb.health(K, T0 + 32).state is HALF_OPEN
    assert cb.acquire(K, T0 + 32) is None  # the trial still holds the slot
    cb.release(the_trial, OK, T0 + 33)
    assert cb.health(K, T0 + 33).state is CLOSED


def test_stragglers_from_before_recovery_are_ignored() -> None:
    cb, _ = machine()
    slow = [cb.acquire(K, T0) for _ in range(5)]
    open_at(cb, T0 + 1)
    cb.release(trial(cb, T0 + 31), OK, T0 + 32)
    for p in slow:
        assert p is not None
        cb.release(p, FAIL, T0 + 33, "old news")
    h = cb.health(K, T0 + 33)
    assert (h.state, h.consecutive_failures, h.window_requests, h.last_error) == (CLOSED, 0, 0, "upstream 503")


def test_old_permit_of_a_forgotten_target_is_ignored() -> None:
    cb, _ = machine()
    cb.release(Permit(K, False, 7, True), FAIL, T0)  # epoch 7: granted before the target was evicted
    assert len(cb) == 0


# -- failure rate ----------------------------------------------------------------------------------------------


def test_failure_rate_opens_once_min_requests_seen() -> None:
    cb, moves = machine(BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_requests=10, window_s=60.0))
    for i in range(4):  # alternate: consecutive failures never exceed 1
        call(cb, T0 + i, OK)
        call(cb, T0 + i, FAIL)
    call(cb, T0 + 5, FAIL)  # 9 requests, 5 failures: rate 0.55 but below min_requests
    assert cb.health(K, T0 + 5).state is CLOSED
    call(cb, T0 + 6, OK)  # 10 requests, 5 failures = 0.5: a success never opens
    assert cb.health(K, T0 + 6).state is CLOSED
    call(cb, T0 + 7, FAIL)  # 11 requests, 6 failures
    h = cb.health(K, T0 + 7)
    assert (h.state, h.window_requests, h.window_failures, h.consecutive_failures) == (OPEN, 11, 6, 1)
    assert moves == [(K, CLOSED, OPEN)]


def test_failure_rate_below_threshold_stays_closed() -> None:
    cb, _ = machine(BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_requests=10))
    for i in range(30):
        call(cb, T0 + i, FAIL if i % 3 == 0 else OK)  # one in three fails
    assert cb.health(K, T0 + 30).state is CLOSED


def test_failure_rate_window_rolls() -> None:
    cb, _ = machine(BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_requests=4, window_s=60.0))
    for _ in range(3):
        call(cb, T0, FAIL)  # below min_requests
    later = T0 + 60  # ten buckets on: the same ring slot, recycled, and those failures have left the window
    assert cb.health(K, later).window_requests == 0
    call(cb, later, OK)
    call(cb, later, OK)
    call(cb, later, OK)
    call(cb, later, FAIL)  # 4 requests, 1 failure in the window (7 and 4 if the old ones still counted)
    h = cb.health(K, later)
    assert (h.state, h.window_requests, h.window_failures) == (CLOSED, 4, 1)


def test_failure_rate_off_by_default() -> None:
    cb, _ = machine(BreakerPolicy(failure_threshold=100, min_requests=1))
    for _ in range(50):
        call(cb, T0, FAIL)
    assert cb.health(K, T0).state is CLOSED


# -- helpers and bounds ----------------------------------------------------------------------------------------


def test_window_totals_ignores_expired_buckets() -> None:
    assert window_totals([(100, 5, 1), (91, 2, 2), (90, 7, 7), (101, 9, 9)], 100) == (7, 3)
    policy = BreakerPolicy(window_s=60.0)
    assert bucket_index(T0, policy) == int(T0 // (60.0 / WINDOW_BUCKETS))


def test_rate_trips_edges() -> None:
    p = BreakerPolicy(failure_rate=0.5, min_requests=4)
    assert rate_trips(p, 4, 2) and not rate_trips(p, 3, 3) and not rate_trips(p, 4, 1)
    assert not rate_trips(BreakerPolicy(min_requests=1), 10, 10)


def test_last_error_is_truncated() -> None:
    cb, _ = machine()
    call(cb, T0, FAIL, "x" * 5000)
    err = cb.health(K, T0).last_error
    assert err is not None and len(err) == MAX_ERROR_CHARS and err.endswith("…")
    assert truncate_error("short") == "short" and truncate_error(None) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: BreakerPolicy(failure_threshold=0),
        lambda: BreakerPolicy(cooldown_s=0),
        lambda: BreakerPolicy(failure_rate=0.0),
        lambda: BreakerPolicy(failure_rate=1.5),
        lambda: BreakerPolicy(window_s=-1),
        lambda: BreakerPolicy(min_requests=0),
        lambda: BreakerPolicy(trial_lease_s=0),
    ],
)
def test_policy_rejects_nonsense(make: Callable[[], BreakerPolicy]) -> None:
    with pytest.raises(ValueError):
        make()


def test_memory_is_bounded_and_evicts_closed_targets_first() -> None:
    cb = CircuitBreaker(BreakerPolicy(failure_threshold=1), max_targets=3)
    open_at(cb, T0, "down")
    for i in range(10):
        call(cb, T0, OK, key=f"client-made-up/{i}")
    assert len(cb) == 3
    assert cb.health("down", T0).state is OPEN  # the open target survived the churn

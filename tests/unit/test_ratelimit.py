"""The pure sliding-window limiter (``aigw.ratelimit.RateLimiter``), driven by an explicit clock."""

from __future__ import annotations

import pytest

from aigw.ratelimit import Decision, RateLimiter, Reservation, Verdict, retry_after_header

T0 = 1_700_000_000.0  # a whole minute (divisible by 60): "clock minute" boundaries fall on T0 + 60 k


def admit(rl: RateLimiter, now: float, tenant: str = "t1", rpm: int | None = 5, tpm: int | None = None,
          est: int = 0) -> Verdict:  # fmt: skip
    return rl.check(tenant, rpm, tpm, est, now)


def test_exact_boundary_n_admitted_then_refused() -> None:
    rl = RateLimiter()
    verdicts = [admit(rl, T0 + i) for i in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [v.requests.remaining for v in verdicts if v.requests] == [4, 3, 2, 1, 0, 0]
    refused = verdicts[-1]
    assert refused.reservation is None
    # The oldest entry (T0) leaves the window at T0 + 60: 55 s after the refusal at T0 + 5.
    assert refused.requests == Decision(False, 5, 0, reset_s=59.0, retry_after_s=55.0)
    assert refused.retry_after_s == 55.0


def test_window_rolls_exactly_at_sixty_seconds() -> None:
    rl = RateLimiter()
    for _ in range(5):
        assert admit(rl, T0).allowed
    assert not admit(rl, T0 + 59.999).allowed
    assert admit(rl, T0 + 60).allowed  # the first five left together at T0 + 60
    assert admit(rl, T0 + 60).allowed
    assert not admit(rl, T0 + 60, rpm=2).allowed  # a lowered limit applies at once


def test_burst_cannot_pass_twice_by_straddling_a_minute() -> None:
    rl = RateLimiter()
    burst_at_59 = [admit(rl, T0 + 59.5).allowed for _ in range(5)]
    burst_at_00 = [admit(rl, T0 + 60.5).allowed for _ in range(5)]
    assert burst_at_59 == [True] * 5
    assert burst_at_00 == [False] * 5  # a fixed-minute counter would have admitted all ten
    v = admit(rl, T0 + 60.5)
    assert v.requests is not None and v.requests.retry_after_s == pytest.approx(59.0)
    assert admit(rl, T0 + 119.5).allowed


def test_retry_after_counts_entries_that_must_leave() -> None:
    rl = RateLimiter()
    for i in range(5):
        admit(rl, T0 + 10 * i)  # 0, 10, 20, 30, 40
    v = admit(rl, T0 + 45, rpm=3)  # limit lowered to 3: 3 of the 5 must leave; the third oldest leaves at T0 + 80
    assert v.requests == Decision(False, 3, 0, reset_s=55.0, retry_after_s=35.0)
    assert [retry_after_header(x) for x in (None, 0.0, 0.2, 1.0, 1.01, 59.5, 61, 3600)] == [1, 1, 1, 1, 2, 60, 60, 60]


def test_admitted_reports_remaining_and_reset() -> None:
    rl = RateLimiter()
    v = admit(rl, T0, tpm=1000, est=300)
    assert v.allowed and v.retry_after_s is None
    assert v.requests == Decision(True, 5, 4, 60.0, None)
    assert v.tokens == Decision(True, 1000, 700, 60.0, None)
    assert v.reservation == Reservation("t1", v.reservation.entry if v.reservation else None, 300)


def test_tenants_are_isolated() -> None:
    rl = RateLimiter()
    for _ in range(5):
        assert admit(rl, T0, tenant="a").allowed
    assert not admit(rl, T0, tenant="a").allowed
    assert admit(rl, T0, tenant="b").allowed


def test_none_is_unlimited() -> None:
    rl = RateLimiter()
    for _ in range(1000):
        v = admit(rl, T0, rpm=None, tpm=None, est=10**6)
        assert v.allowed and v.requests is None and v.tokens is None
    assert len(rl) == 0  # nothing recorded
    for _ in range(100):
        assert admit(rl, T0, rpm=None, tpm=100, est=1).allowed  # requests unlimited, tokens limited
    v = admit(rl, T0, rpm=None, tpm=100, est=1)
    assert not v.allowed and v.requests is None and v.tokens is not None


def test_tpm_reserve_then_refund() -> None:
    rl = RateLimiter()
    v = admit(rl, T0, rpm=None, tpm=1000, est=800)
    assert v.reservation is not None
    assert not admit(rl, T0 + 1, rpm=None, tpm=1000, est=300).allowed  # 800 reserved + 300 > 1000
    rl.settle(v.reservation, 200, T0 + 2)  # refund 600
    w = admit(rl, T0 + 3, rpm=None, tpm=1000, est=300)
    assert w.allowed and w.tokens is not None and w.tokens.remaining == 500
    rl.settle(Reservation("t1", None, 0), 10**6, T0 + 4)  # unlimited reservations settle to nothing


def test_tpm_settle_charges_the_difference_and_expires_at_the_reservation_time() -> None:
    rl = RateLimiter()
    v = admit(rl, T0, rpm=None, tpm=1000, est=100)
    assert v.reservation is not None
    rl.settle(v.reservation, 700, T0 + 30)  # charge 600 more, still dated T0
    refused = admit(rl, T0 + 31, rpm=None, tpm=1000, est=400)
    assert refused.tokens == Decision(False, 1000, 0, reset_s=29.0, retry_after_s=29.0)
    assert admit(rl, T0 + 31, rpm=None, tpm=1000, est=300).allowed  # 700 + 300 fits exactly
    assert admit(rl, T0 + 60, rpm=None, tpm=1000, est=700).allowed  # the 700 left at T0 + 60


def test_single_request_may_overshoot() -> None:
    rl = RateLimiter()
    big = admit(rl, T0, rpm=None, tpm=1000, est=5000)  # alone in an empty window: admitted
    assert big.allowed and big.tokens is not None and big.tokens.remaining == 0
    assert big.reservation is not None
    rl.settle(big.reservation, 6000, T0 + 5)
    nxt = admit(rl, T0 + 5, rpm=None, tpm=1000, est=1)
    assert not nxt.allowed and nxt.tokens is not None and nxt.tokens.retry_after_s == 55.0


def test_settle_after_the_window_charges_now() -> None:
    rl = RateLimiter()
    v = admit(rl, T0, rpm=None, tpm=1000, est=10)
    assert v.reservation is not None
    rl.settle(v.reservation, 900, T0 + 90)  # a 90 s stream: its usage still counts, from now
    assert not admit(rl, T0 + 91, rpm=None, tpm=1000, est=200).allowed
    assert admit(rl, T0 + 150, rpm=None, tpm=1000, est=200).allowed


def test_nothing_charged_when_either_dimension_refuses() -> None:
    rl = RateLimiter()
    assert admit(rl, T0, rpm=2, tpm=100, est=90).allowed
    v = admit(rl, T0, rpm=2, tpm=100, est=50)  # tokens refuse, requests would admit
    assert not v.allowed and v.requests is not None and v.tokens is not None
    assert v.requests.allowed and v.requests.remaining == 1  # not charged
    assert not v.tokens.allowed
    assert admit(rl, T0, rpm=2, tpm=100, est=10).allowed  # the refused one took neither slot nor tokens
    assert not admit(rl, T0, rpm=2, tpm=100, est=0).allowed  # now requests refuse


def test_sweep_forgets_idle_tenants() -> None:
    rl = RateLimiter()
    admit(rl, T0, tenant="a")
    admit(rl, T0 + 30, tenant="b", tpm=10, est=1)
    assert rl.sweep(T0 + 60) == 1 and len(rl) == 1
    assert rl.sweep(T0 + 90) == 1 and len(rl) == 0

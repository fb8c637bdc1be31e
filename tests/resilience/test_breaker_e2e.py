"""The circuit breaker end to end (contract "Semantics: circuit breaker"; issue 4), in-process state.

A target (provider + upstream model) opens after ``failure_threshold`` consecutive failures and then receives no
traffic for ``cooldown_s``; half-open admits exactly one trial at a time; the trial's success closes the circuit,
its failure re-opens it. A client's 400 is no verdict on the target. ``failure_rate`` opens a target whose failures
are not consecutive. ``GET /admin/providers`` shows all of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.fakes import faults
from tests.resilience.conftest import (
    CHAT,
    COOLDOWN_S,
    THRESHOLD,
    Fakes,
    Stack,
    Tenant,
    body,
    circuit,
    client_for,
    heal,
    make_stack,
    wait_for_cooldown,
)
from tests.support.gateway import RunningGateway
from tests.support.ledger import wait_for_ledger

KEY = "oai/gpt-guarded"  # alias "guarded": [oai/gpt-guarded, local/llama3.2]
CONCURRENT = 20


@pytest.fixture
def f(stack: Stack, gw: RunningGateway) -> Fakes:
    return stack.fakes


def served_by(r: httpx.Response, provider: str, attempts: int) -> None:
    assert r.status_code == 200, r.text
    assert (r.headers["x-aigw-provider"], r.headers["x-aigw-attempts"]) == (provider, str(attempts))


def open_circuit(f: Fakes, http: httpx.Client, gw: RunningGateway, message: str = "guarded is down") -> None:
    """``THRESHOLD`` failures in a row: each one still reaches the target (and falls back), the last one opens it."""
    f.oai.inject(faults.status(500, message), times=THRESHOLD)
    for i in range(THRESHOLD):
        assert circuit(gw, KEY)["state"] == "closed", f"open after only {i} failures"
        served_by(http.post(CHAT, json=body("guarded")), "local", attempts=2)
        assert len(f.oai.requests) == i + 1
    assert circuit(gw, KEY)["state"] == "open"


def transitions(gw: RunningGateway) -> dict[str, int]:
    counts: dict[str, int] = circuit(gw, KEY)["transitions"]
    return counts


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {state: n - before.get(state, 0) for state, n in after.items() if n != before.get(state, 0)}


def test_opens_after_threshold_and_skips_the_target(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    before = transitions(gw)
    opened_after = time.time()
    open_circuit(f, http, gw)
    entry = circuit(gw, KEY)
    assert (entry["provider"], entry["model"], entry["state"]) == ("oai", "gpt-guarded", "open")
    assert entry["consecutive_failures"] == THRESHOLD
    assert "guarded is down" in entry["last_error"]
    opened_at = datetime.fromisoformat(entry["opened_at"])
    assert opened_at.tzinfo is not None
    assert opened_after - 1 <= opened_at.timestamp() <= time.time() + 1
    assert delta(entry["transitions"], before) == {"open": 1}
    assert circuit(gw, "local/llama3.2")["state"] == "closed", "the healthy target is untouched"

    for stream in (False, True, False):
        r = http.post(CHAT, json=body("guarded", stream=stream))
        served_by(r, "local", attempts=1)  # skipped without a call: only one target was tried
    assert len(f.oai.requests) == THRESHOLD, "an open target receives no traffic"


def test_half_open_admits_exactly_one_trial_and_its_success_closes(
    f: Fakes, http: httpx.Client, gw: RunningGateway
) -> None:
    open_circuit(f, http, gw)
    before = transitions(gw)
    wait_for_cooldown(gw, KEY)
    f.oai.inject(faults.hang(1.6))  # the trial stays in flight while the others arrive (under the 2 s deadline)
    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(http.post, CHAT, json=body("guarded")) for _ in range(CONCURRENT)]
        pending = as_completed(futures, timeout=10)
        skipped = [next(pending).result() for _ in range(CONCURRENT - 1)]
        trial_in_flight = len(f.oai.requests) == THRESHOLD + 1 and not f.oai.requests[-1].done.is_set()
        trial = next(pending).result()
    assert trial_in_flight, "the other requests finished while the trial was still in flight"
    for r in skipped:
        served_by(r, "local", attempts=1)
    served_by(trial, "oai", attempts=1)
    assert len(f.oai.requests) == THRESHOLD + 1, "exactly one trial reached the half-open target"

    entry = circuit(gw, KEY)
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)
    assert delta(entry["transitions"], before) == {"half_open": 1, "closed": 1}
    served_by(http.post(CHAT, json=body("guarded")), "oai", attempts=1)


def test_trial_failure_reopens(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    open_circuit(f, http, gw)
    first_opened = circuit(gw, KEY)["opened_at"]
    before = transitions(gw)
    wait_for_cooldown(gw, KEY)
    f.oai.inject(faults.status(503, "still down"))
    served_by(http.post(CHAT, json=body("guarded")), "local", attempts=2)  # the trial, then the fallback
    entry = circuit(gw, KEY)
    assert entry["state"] == "open"
    assert "still down" in entry["last_error"]
    assert entry["opened_at"] > first_opened, "a new cooldown started"
    assert delta(entry["transitions"], before) == {"half_open": 1, "open": 1}
    served_by(http.post(CHAT, json=body("guarded")), "local", attempts=1)
    assert len(f.oai.requests) == THRESHOLD + 1


def test_cancelled_trial_is_no_verdict(f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant) -> None:
    # The trial's client leaves: the target is neither closed nor re-opened, and the next request is the trial.
    open_circuit(f, http, gw)
    wait_for_cooldown(gw, KEY)
    f.oai.inject(faults.hang())
    with client_for(gw, tenant.key, timeout=0.6) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(CHAT, json=body("guarded"))
    assert f.oai.wait_for_disconnects(1)
    assert [row["status"] for row in wait_for_ledger(gw, tenant.id, THRESHOLD + 1)][-1] == 499
    assert circuit(gw, KEY)["state"] == "half_open"
    served_by(http.post(CHAT, json=body("guarded")), "oai", attempts=1)
    assert circuit(gw, KEY)["state"] == "closed"
    assert len(f.oai.requests) == THRESHOLD + 2


def test_request_errors_do_not_count_as_failures(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    f.oai.inject(faults.status(400, "bad request"), times=THRESHOLD + 2)
    for _ in range(THRESHOLD + 2):
        r = http.post(CHAT, json=body("guarded"))
        assert r.status_code == 400, r.text
    entry = circuit(gw, KEY)
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)
    assert "bad request" not in (entry["last_error"] or "")
    served_by(http.post(CHAT, json=body("guarded")), "oai", attempts=1)
    assert f.olla.requests == []


def test_success_resets_the_consecutive_count(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    for _ in range(3):
        f.oai.inject(faults.status(500), times=THRESHOLD - 1)
        for _ in range(THRESHOLD):  # THRESHOLD - 1 failures, then a success
            http.post(CHAT, json=body("guarded"))
    assert circuit(gw, KEY)["state"] == "closed"
    assert len(f.oai.requests) == 3 * THRESHOLD, "never skipped: the failures were not consecutive"


def test_open_target_is_named_when_the_rest_fail(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    open_circuit(f, http, gw)
    f.olla.inject(faults.status(503, "ollama melted"))
    r = http.post(CHAT, json=body("guarded"))
    assert r.status_code == 502, r.text
    assert r.headers["x-aigw-attempts"] == "1", "the open target was skipped, not called"
    message = r.json()["error"]["message"]
    assert KEY in message and "circuit open" in message, message
    assert "local/llama3.2" in message and "ollama melted" in message, message
    assert len(f.oai.requests) == THRESHOLD


def test_skipped_open_target_does_not_turn_a_timeout_into_a_502(
    f: Fakes, http: httpx.Client, gw: RunningGateway
) -> None:
    # Contract: 504 "when every tried target timed out". A skipped target was not tried.
    f.oai.inject(faults.status(500), times=THRESHOLD)
    for _ in range(THRESHOLD):
        served_by(http.post(CHAT, json=body("all-short")), "claude-short", attempts=2)
    assert circuit(gw, "oai-short/gpt-4o")["state"] == "open"
    f.ant.inject(faults.hang())
    r = http.post(CHAT, json=body("all-short"))
    assert r.headers["x-aigw-attempts"] == "1"
    assert len(f.oai.requests) == THRESHOLD, "target 1 was skipped"
    assert r.status_code == 504, f"the only target tried timed out, yet: {r.status_code} {r.text}"


def test_streams_broken_after_commit_count_as_failures(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    # A provider that breaks every stream mid-way is failing: the gateway tells each client so (an error event,
    # a 502 in the ledger), and its breaker must learn it too, or every stream keeps going to the broken provider.
    f.oai.inject(faults.drop_after(2), times=THRESHOLD)
    for _ in range(THRESHOLD):
        r = http.post(CHAT, json=body("guarded", stream=True))
        assert r.headers["x-aigw-provider"] == "oai" and b"data: [DONE]" not in r.content
        assert b'"error"' in r.content
    entry = circuit(gw, KEY)
    assert (entry["state"], entry["consecutive_failures"], entry["recent"]["failures"]) == (
        "open",
        THRESHOLD,
        THRESHOLD,
    ), f"{THRESHOLD} streams broke after their first chunk, but the breaker recorded: {entry}"
    r = http.post(CHAT, json=body("guarded", stream=True))
    assert r.headers["x-aigw-provider"] == "local", "the broken provider still receives streams"


# -- the failure-rate policy: a second gateway on the same fakes -------------------------------------------------

RATE_POLICY = {
    "failure_threshold": 10,
    "cooldown_s": COOLDOWN_S,
    "failure_rate": 0.5,
    "window_s": 30,
    "min_requests": 4,
}


@pytest.fixture(scope="module")
def rate_stack(fakes: Fakes, sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(fakes, sqlite_template, tmp_path_factory, circuit_breaker=RATE_POLICY)


@pytest.fixture
def rate_gw(rate_stack: Stack) -> Iterator[RunningGateway]:
    rate_stack.fakes.reset()
    yield rate_stack.gw
    heal(rate_stack)


def test_failure_rate_opens_a_target_whose_failures_are_not_consecutive(
    rate_gw: RunningGateway, rate_stack: Stack
) -> None:
    f = rate_stack.fakes
    with client_for(rate_gw, rate_gw.new_tenant("rate")["api_key"]) as http:
        # fail, ok, fail, ok: 2 of 4 failed but a success never opens; the next failure makes it 3 of 5 >= 0.5
        for i, fails in enumerate([True, False, True, False, True]):
            if fails:
                f.oai.inject(faults.status(500, f"failure #{i}"))
            served_by(http.post(CHAT, json=body("guarded")), "local" if fails else "oai", 2 if fails else 1)
            entry = circuit(rate_gw, KEY)
            assert entry["consecutive_failures"] <= 1
            assert entry["state"] == ("open" if i == 4 else "closed"), (i, entry)
        assert entry["recent"] == {"requests": 5, "failures": 3}
        served_by(http.post(CHAT, json=body("guarded")), "local", attempts=1)
    assert len(f.oai.requests) == 5

"""Per-provider timeouts (config: ``first_byte_timeout_s``, ``timeout_s``, ``stream_timeout_s``; issue 4).

Provider ``oai-short`` has ``first_byte_timeout_s: 0.3`` (response headers; for a stream, its first chunk),
``timeout_s: 0.5`` (for a stream: the longest silence between two chunks) and ``stream_timeout_s: 1`` (a whole
stream). Before a stream's first chunk a timeout falls back like any failure; after it, the stream ends with an
error event and never ``[DONE]``.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fakes import faults
from tests.resilience.conftest import (
    CHAT,
    FIRST_BYTE_S,
    SILENCE_S,
    STREAM_S,
    Fakes,
    Stack,
    Tenant,
    body,
    broken_stream,
    text_of,
)
from tests.support.gateway import RunningGateway
from tests.support.ledger import ledger
from tests.support.openapi import validate, validate_sse_stream

LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(24))}]  # ~26 stream chunks
SHORT_REPLY = [{"role": "user", "content": "hi"}]


@pytest.fixture
def f(stack: Stack, gw: RunningGateway) -> Fakes:
    return stack.fakes


class Clock:
    def __enter__(self) -> Clock:
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.started


# -- time to first byte ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["hang", "hang-then-answer"])
def test_first_byte_timeout_single_target_is_504(fault: str, f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.hang() if fault == "hang" else faults.hang(1.0))
    with Clock() as clock:
        r = http.post(CHAT, json=body("short-solo"))
    assert r.status_code == 504, r.text
    assert FIRST_BYTE_S - 0.05 <= clock.elapsed < SILENCE_S, f"{clock.elapsed:.2f}s: not the first-byte limit"
    validate("ErrorResponse", r.json())
    assert "oai-short/gpt-solo" in r.json()["error"]["message"]
    assert r.headers["x-aigw-attempts"] == "1"
    assert f.oai.wait_for_disconnects(1), "the gateway hung up on the slow upstream"


def test_answer_within_the_first_byte_timeout_is_served(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.hang(FIRST_BYTE_S / 3))
    r = http.post(CHAT, json=body("short-solo"))
    assert r.status_code == 200, r.text
    assert r.headers["x-aigw-provider"] == "oai-short"


def test_first_byte_timeout_falls_back(f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant) -> None:
    f.oai.inject(faults.hang())
    with Clock() as clock:
        r = http.post(CHAT, json=body("short"))
    assert r.status_code == 200, r.text
    assert (r.headers["x-aigw-provider"], r.headers["x-aigw-attempts"]) == ("claude", "2")
    assert FIRST_BYTE_S - 0.05 <= clock.elapsed < SILENCE_S, f"{clock.elapsed:.2f}s: not the first-byte limit"
    assert r.json()["model"] == "claude-sonnet-4-6"
    assert [(row["status"], row["provider"]) for row in ledger(gw, tenant.id)] == [(200, "claude")]


# -- streams: before the first chunk -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stall_after(0)", "hang"])
def test_stream_first_chunk_timeout_falls_back_before_commit(
    fault: str, f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    # stall_after(0): headers arrive at once, then no chunk. The first-chunk limit still applies.
    f.oai.inject(faults.stall_after(0) if fault.startswith("stall") else faults.hang())
    with Clock() as clock:
        r = http.post(CHAT, json=body("short", stream=True))
    assert FIRST_BYTE_S - 0.05 <= clock.elapsed < SILENCE_S, f"{clock.elapsed:.2f}s: not the first-chunk limit"
    assert r.status_code == 200, r.text
    assert (r.headers["x-aigw-provider"], r.headers["x-aigw-attempts"]) == ("claude", "2")
    chunks = validate_sse_stream(r.content)
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"claude-sonnet-4-6"}
    assert f.oai.wait_for_disconnects(1)
    assert [(row["status"], row["provider"], row["stream"]) for row in ledger(gw, tenant.id)] == [(200, "claude", True)]


def test_stream_first_chunk_timeout_single_target_is_504(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.stall_after(0))
    with Clock() as clock:
        r = http.post(CHAT, json=body("short-solo", stream=True))
    assert r.status_code == 504, r.text
    assert clock.elapsed < SILENCE_S, f"{clock.elapsed:.2f}s: not the first-chunk limit"
    assert r.headers["content-type"].startswith("application/json"), "not committed to a 200 stream"
    validate("ErrorResponse", r.json())


# -- streams: after the first chunk ------------------------------------------------------------------------------


def test_stream_silent_after_chunks_ends_with_an_error_event(
    f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    f.oai.inject(faults.stall_after(2))
    with Clock() as clock:
        r = http.post(CHAT, json=body("short", stream=True))
    assert clock.elapsed < 2.0, "timeout_s bounds the silence between two chunks"
    assert r.headers["x-aigw-provider"] == "oai-short"
    chunks, _ = broken_stream(r)
    assert text_of(chunks) == "Echo:"  # the role chunk, then "Echo:"
    assert f.ant.requests == [], "no fallback after the commit point"
    assert f.oai.wait_for_disconnects(1), "the silent upstream was hung up on"
    assert [(row["status"], row["provider"]) for row in ledger(gw, tenant.id)] == [(502, "oai-short")]


def test_stream_timeout_bounds_a_slow_stream(f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant) -> None:
    # A chunk every 0.08 s (the first, role merged in, after 0.16 s): each silence is within timeout_s and the
    # first chunk within first_byte_timeout_s, but the whole stream (~2 s) is not within stream_timeout_s.
    f.oai.inject(faults.slow(0.08))
    with Clock() as clock:
        r = http.post(CHAT, json={"model": "short", "messages": LONG, "stream": True})
    assert STREAM_S - 0.05 <= clock.elapsed < STREAM_S + 0.8, f"{clock.elapsed:.2f}s"
    chunks, err = broken_stream(r)
    assert 2 <= len(chunks) < 20, "cut short, after some chunks"
    assert f"{STREAM_S:g}s" in err["message"] or f"{STREAM_S:g} s" in err["message"], err
    assert f.ant.requests == []
    assert f.oai.wait_for_disconnects(1)
    assert [row["status"] for row in ledger(gw, tenant.id)] == [502]


def test_slow_stream_within_its_limits_completes(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.slow(0.08))
    r = http.post(CHAT, json={"model": "short", "messages": SHORT_REPLY, "stream": True})
    assert r.headers["x-aigw-provider"] == "oai-short"
    assert text_of(validate_sse_stream(r.content)) == "Echo: hi"

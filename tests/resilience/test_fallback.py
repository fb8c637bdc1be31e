"""Fallback along an alias's targets (contract "Semantics: fallback"; issue 4), against the fakes over real TCP.

429, 5xx (Anthropic's 529 too), timeouts, refused or reset connections and upstream 401/403/404 fall through to
the next target; request errors (400, 413, 422) go back to the client and the chain stops. Streams fall back only
before their first chunk. Retries honour retry-after and every chain is bounded by the request deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from tests.fakes import faults
from tests.fakes.base import FakeUpstream
from tests.resilience.conftest import (
    CHAT,
    FIRST_BYTE_S,
    REQUEST_TIMEOUT_S,
    Fakes,
    Stack,
    Tenant,
    body,
    broken_stream,
    circuit,
    client_for,
    text_of,
)
from tests.support.gateway import RunningGateway
from tests.support.ledger import ledger, wait_for_ledger
from tests.support.openapi import validate, validate_sse_stream

REPLY = "Echo: one two three four five six seven eight"


@pytest.fixture
def f(stack: Stack, gw: RunningGateway) -> Fakes:
    return stack.fakes


def assert_served_by(r: httpx.Response, provider: str, model: str, attempts: int) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["x-aigw-provider"] == provider
    assert r.headers["x-aigw-attempts"] == str(attempts)
    payload = r.json()
    validate("CreateChatCompletionResponse", payload)
    assert payload["model"] == model, "the answer is the serving target's"
    assert payload["choices"][0]["message"]["content"] == REPLY


def clean_stream(r: httpx.Response, provider: str, model: str, attempts: int) -> None:
    """A 200 stream that looks exactly like one from the serving target alone: valid chunks, one id, [DONE]."""
    assert r.status_code == 200, r.text
    assert r.headers["x-aigw-provider"] == provider
    assert r.headers["x-aigw-attempts"] == str(attempts)
    chunks = validate_sse_stream(r.content)  # ends with exactly one data: [DONE]
    assert len({c["id"] for c in chunks}) == 1, "one stream id, whichever target served it"
    assert {c["model"] for c in chunks} == {model}
    assert text_of(chunks) == REPLY
    assert b'"error"' not in r.content


# -- first target fails: the second serves ----------------------------------------------------------------------

FALLS_BACK: dict[str, Callable[[], faults.Fault]] = {
    "500": lambda: faults.status(500),
    "502-html": lambda: faults.raw(502, b"<html>bad gateway</html>", "text/html"),
    "503": lambda: faults.status(503),
    "429-retry-after": lambda: faults.status(429, retry_after="7"),
    "401": lambda: faults.status(401),
    "403": lambda: faults.status(403),
    "404": lambda: faults.status(404),
    "reset": lambda: faults.drop_after(0),  # the connection dies without any response
    "unreadable-200": lambda: faults.raw(200, b"<html>maintenance</html>", "text/html"),
}


@pytest.mark.parametrize("name", sorted(FALLS_BACK))
def test_target_failure_falls_back_to_the_next(
    name: str, f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    f.oai.inject(FALLS_BACK[name]())
    started = time.monotonic()
    r = http.post(CHAT, json=body("chain"))
    assert time.monotonic() - started < 3, "no retry-after wait without a retry"
    assert_served_by(r, "claude", "claude-sonnet-4-6", attempts=2)
    assert len(f.oai.requests) == 1 and len(f.ant.requests) == 1 and f.olla.requests == []
    assert [(row["status"], row["provider"], row["upstream_model"]) for row in ledger(gw, tenant.id)] == [
        (200, "claude", "claude-sonnet-4-6")
    ], "one usage record, for the provider that served"


def test_anthropic_529_falls_back(f: Fakes, http: httpx.Client) -> None:
    f.ant.inject(faults.status(529))
    assert_served_by(http.post(CHAT, json=body("ant-first")), "local", "llama3:8b", attempts=2)
    assert len(f.ant.requests) == 1 and f.ant.requests[0].status == 529


def test_connection_refused_falls_back(f: Fakes, http: httpx.Client) -> None:
    assert_served_by(http.post(CHAT, json=body("refused")), "claude", "claude-sonnet-4-6", attempts=2)


def test_timeout_falls_back(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.hang())
    assert_served_by(http.post(CHAT, json=body("short")), "claude", "claude-sonnet-4-6", attempts=2)
    assert f.oai.wait_for_disconnects(1), "the timed-out upstream request was abandoned"
    assert len(f.oai.requests) == 1


# -- request errors go back to the client -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 413, 422])
@pytest.mark.parametrize("stream", [False, True])
def test_request_error_is_returned_without_fallback(
    status: int, stream: bool, f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    f.oai.inject(faults.status(status, "your request is wrong: bad 'temperature'"))
    r = http.post(CHAT, json=body("chain", stream=stream))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-aigw-attempts"] == "1"
    validate("ErrorResponse", r.json())
    assert "your request is wrong" in r.json()["error"]["message"]
    assert len(f.oai.requests) == 1
    assert f.ant.requests == [] and f.olla.requests == [], "the chain stopped at the request error"
    assert [row["status"] for row in ledger(gw, tenant.id)] == [status]


# -- every target fails -----------------------------------------------------------------------------------------


def test_all_targets_fail_is_a_502_naming_each(
    f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    f.oai.inject(faults.status(500, "openai exploded"))
    f.ant.inject(faults.status(529, "claude is overloaded"))
    f.olla.inject(faults.status(503, "ollama melted"))
    r = http.post(CHAT, json=body("chain"))
    assert r.status_code == 502, r.text
    assert r.headers["x-aigw-attempts"] == "3"
    validate("ErrorResponse", r.json())
    message = r.json()["error"]["message"]
    for target, why in [
        ("oai/gpt-4o-mini", "openai exploded"),
        ("claude/claude-sonnet-4-6", "claude is overloaded"),
        ("local/llama3:8b", "ollama melted"),
    ]:
        assert target in message and why in message, message
    assert [len(x.requests) for x in f.all()] == [1, 1, 1]
    assert [(row["status"], row["provider"]) for row in ledger(gw, tenant.id)] == [(502, None)]


def test_refused_and_failed_is_a_502_naming_each(f: Fakes, http: httpx.Client) -> None:
    f.ant.inject(faults.status(500, "claude broke"))
    r = http.post(CHAT, json=body("all-fail"))
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert "dead/gpt-all-fail" in message and "connect" in message, message
    assert "claude/claude-haiku-4-5" in message and "claude broke" in message, message
    assert "127.0.0.1:9" not in message, "errors name the provider, not the internal URL"


def test_all_targets_time_out_is_a_504(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.hang())
    f.ant.inject(faults.hang())
    started = time.monotonic()
    r = http.post(CHAT, json=body("all-short"))
    assert r.status_code == 504, r.text
    assert time.monotonic() - started < 2 * FIRST_BYTE_S + 1
    assert r.headers["x-aigw-attempts"] == "2"
    message = r.json()["error"]["message"]
    assert "oai-short/gpt-4o" in message and "claude-short/claude-sonnet-4-6" in message, message
    assert f.oai.wait_for_disconnects(1) and f.ant.wait_for_disconnects(1)


def test_all_timed_out_error_is_typed_timeout(f: Fakes, http: httpx.Client) -> None:
    # docs/spec.md, errors table: 504 | `timeout` / `all_targets_failed` | every tried target timed out.
    f.oai.inject(faults.hang())
    f.ant.inject(faults.hang())
    r = http.post(CHAT, json=body("all-short"))
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("timeout", "all_targets_failed"), error


def test_all_targets_throttled_passes_the_shortest_retry_after(f: Fakes, http: httpx.Client) -> None:
    f.ant.inject(faults.status(529, retry_after="3"))
    f.olla.inject(faults.status(429, retry_after="5"))
    r = http.post(CHAT, json=body("ant-first"))
    assert r.status_code == 502, r.text
    assert r.headers["retry-after"] == "3"


def test_no_retry_after_unless_every_target_was_throttled(f: Fakes, http: httpx.Client) -> None:
    f.ant.inject(faults.status(529, retry_after="3"))
    f.olla.inject(faults.status(500))
    r = http.post(CHAT, json=body("ant-first"))
    assert r.status_code == 502, r.text
    assert "retry-after" not in r.headers


def test_timeout_and_error_is_a_502_not_a_504(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.hang())
    f.ant.inject(faults.status(500))
    r = http.post(CHAT, json=body("all-short"))
    assert r.status_code == 502, r.text


# -- streams ----------------------------------------------------------------------------------------------------

BEFORE_FIRST_CHUNK: dict[str, Callable[[], faults.Fault]] = {
    "500": lambda: faults.status(500),
    "429": lambda: faults.status(429, retry_after="1"),
    "401": lambda: faults.status(401),
    "drop-after-0": lambda: faults.drop_after(0),
    "error-after-0": lambda: faults.error_after(0, "early failure"),
    "drop-after-role": lambda: faults.drop_after(1),  # the role-only opening chunk is not content yet
    "error-after-role": lambda: faults.error_after(1, "failed after the role chunk"),
    "empty-200": lambda: faults.raw(200, b"data: [DONE]\n\n", "text/event-stream"),
}


@pytest.mark.parametrize("name", sorted(BEFORE_FIRST_CHUNK))
def test_stream_failing_before_its_first_chunk_falls_back(
    name: str, f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    f.oai.inject(BEFORE_FIRST_CHUNK[name]())
    r = http.post(CHAT, json=body("chain", stream=True))
    clean_stream(r, "claude", "claude-sonnet-4-6", attempts=2)
    assert len(f.oai.requests) == 1 and len(f.ant.requests) == 1
    assert [(row["status"], row["provider"], row["stream"]) for row in ledger(gw, tenant.id)] == [(200, "claude", True)]


def test_stream_fallback_reports_usage_once(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.status(500))
    r = http.post(CHAT, json=body("chain", stream=True, stream_options={"include_usage": True}))
    assert r.headers["x-aigw-provider"] == "claude"
    chunks = validate_sse_stream(r.content)
    usage = [c for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0]["choices"] == [], "one usage chunk, last"
    assert usage[0]["usage"]["completion_tokens"] == len(REPLY.split())


def test_stream_hanging_past_first_byte_timeout_falls_back(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.hang())
    clean_stream(http.post(CHAT, json=body("short", stream=True)), "claude", "claude-sonnet-4-6", attempts=2)
    assert f.oai.wait_for_disconnects(1)


@pytest.mark.parametrize("fault", ["drop_after", "error_after"])
def test_stream_failing_after_chunks_ends_with_an_error_event(
    fault: str, f: Fakes, http: httpx.Client, gw: RunningGateway, tenant: Tenant
) -> None:
    f.oai.inject(faults.drop_after(2) if fault == "drop_after" else faults.error_after(2, "mid-stream boom"))
    r = http.post(CHAT, json=body("chain", stream=True))
    assert r.headers["x-aigw-provider"] == "oai" and r.headers["x-aigw-attempts"] == "1"
    chunks, err = broken_stream(r)
    assert REPLY.startswith(text_of(chunks)) and text_of(chunks) != REPLY
    if fault == "error_after":
        assert "mid-stream boom" in err["message"]
    assert f.ant.requests == [] and f.olla.requests == [], "no fallback after the commit point"
    assert [(row["status"], row["provider"], row["stream"]) for row in ledger(gw, tenant.id)] == [(502, "oai", True)]


# -- retries, retry-after and the request deadline --------------------------------------------------------------


def arrivals(pool: ThreadPoolExecutor, fake: FakeUpstream, n: int) -> Future[list[float]]:
    """When each of the next ``n`` requests reached the fake (monotonic clock), observed from another thread."""

    def watch() -> list[float]:
        times = []
        for i in range(1, n + 1):
            assert fake.wait_for_requests(i, timeout=10), f"request {i} never reached the fake"
            times.append(time.monotonic())
        return times

    return pool.submit(watch)


def test_retries_on_the_same_target_before_falling_back(f: Fakes, http: httpx.Client, gw: RunningGateway) -> None:
    f.oai.inject(faults.status(500), times=2)
    r = http.post(CHAT, json=body("retry"))
    assert_served_by(r, "oai", "gpt-retry", attempts=1)
    assert [q.status for q in f.oai.requests] == [500, 500, 200]
    assert f.olla.requests == []
    assert circuit(gw, "oai/gpt-retry")["consecutive_failures"] == 0, "the success reset the count"


def test_retries_exhausted_fall_back(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.status(503), times=3)
    assert_served_by(http.post(CHAT, json=body("retry")), "local", "llama3.2", attempts=2)
    assert len(f.oai.requests) == 3


def test_retry_honours_retry_after(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.status(429, retry_after="1"))
    with ThreadPoolExecutor(1) as pool:
        seen = arrivals(pool, f.oai, 2)
        r = http.post(CHAT, json=body("retry"))
        first, second = seen.result(timeout=10)
    assert_served_by(r, "oai", "gpt-retry", attempts=1)
    assert second - first >= 0.95, f"retried {second - first:.3f}s after a 429 with retry-after: 1"
    assert second - first < 1.8


def test_retry_after_beyond_the_deadline_falls_back_at_once(f: Fakes, http: httpx.Client) -> None:
    f.oai.inject(faults.status(429, retry_after="30"))
    started = time.monotonic()
    r = http.post(CHAT, json=body("retry"))
    assert time.monotonic() - started < 1, "waiting 30 s could never fit the request deadline"
    assert_served_by(r, "local", "llama3.2", attempts=2)
    assert len(f.oai.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_request_deadline_caps_retries_and_timeouts(stream: bool, f: Fakes, http: httpx.Client) -> None:
    # Target 1: 3 attempts x 0.3 s + back-off; target 2 hangs with its default 60 s timeout. Only the deadline ends it.
    f.oai.inject(faults.hang(), times=3)
    f.ant.inject(faults.hang())
    started = time.monotonic()
    r = http.post(CHAT, json=body("deadline", stream=stream))
    elapsed = time.monotonic() - started
    assert r.status_code == 504, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert REQUEST_TIMEOUT_S - 0.1 <= elapsed <= REQUEST_TIMEOUT_S + 0.5, f"answered after {elapsed:.2f}s"
    assert len(f.oai.requests) == 3, "the retries fit inside the deadline"
    assert len(f.ant.requests) == 1 and f.ant.wait_for_disconnects(1), "the last attempt was cancelled"
    message = r.json()["error"]["message"]
    assert "oai-short/gpt-deadline" in message and "claude/claude-opus-4-7" in message, message


# -- the client goes away ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_stops_the_chain(stream: bool, f: Fakes, gw: RunningGateway, tenant: Tenant) -> None:
    f.oai.inject(faults.hang())
    with client_for(gw, tenant.key, timeout=0.6) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(CHAT, json=body("chain", stream=stream))
    assert f.oai.wait_for_disconnects(1), "the in-flight upstream attempt was cancelled"
    rows = wait_for_ledger(gw, tenant.id, 1)
    assert [(row["status"], row["stream"]) for row in rows] == [(499, stream)]
    assert f.ant.requests == [] and f.olla.requests == [], "the chain stopped with the client"
    assert circuit(gw, "oai/gpt-4o-mini")["consecutive_failures"] == 0, "a client leaving is no verdict"


def test_client_disconnect_during_backoff_stops_the_chain(f: Fakes, gw: RunningGateway, tenant: Tenant) -> None:
    # The chain is sleeping out a retry-after of 1 s when the client leaves: no retry, no fallback.
    f.oai.inject(faults.status(429, retry_after="1"))
    with client_for(gw, tenant.key, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(CHAT, json=body("retry"))
    assert [row["status"] for row in wait_for_ledger(gw, tenant.id, 1)] == [499]  # the chain has ended
    assert len(f.oai.requests) == 1 and f.olla.requests == []

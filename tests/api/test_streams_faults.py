"""Streaming honesty (contract "Semantics", docs/adr/0003-stream-commit-point.md), against all four fakes.

Before the first chunk a failure is an ordinary JSON error; after it, the 200 stream ends with exactly one
``data: {"error": ...}`` event and never ``data: [DONE]``. A client that goes away cancels the upstream request.
Every stream is metered: 200 completed, 502 failed, 499 abandoned.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx
import openai
import pytest

from aigw.providers.eventstream import encode_message, event_headers, exception_headers
from tests.api.conftest import Stack, TenantKey
from tests.fakes import faults
from tests.fakes.base import FakeUpstream
from tests.support.gateway import RunningGateway
from tests.support.ledger import ledger, wait_for_ledger
from tests.support.openapi import validate, validate_sse_stream

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "one two three four five six seven eight"}]
REPLY = "Echo: one two three four five six seven eight"


@dataclass
class Case:
    model: str
    provider: str
    fake: FakeUpstream
    mid: int  # upstream frames up to the first two content chunks: a cut there is after the commit point


def make_case(model: str, stack: Stack) -> Case:
    # Anthropic: message_start, content_block_start, ping, then one text_delta per word; Bedrock: messageStart,
    # then one contentBlockDelta per word. Neither start event yields a chunk (ADR 0003).
    return {
        "gpt": Case("gpt", "oai", stack.oai, 2),
        "llama": Case("llama", "local", stack.olla, 2),
        "claude": Case("claude", "claude", stack.ant, 5),
        "bedrock": Case("bedrock", "aws", stack.brk, 3),
    }[model]


@pytest.fixture(params=["gpt", "llama", "claude", "bedrock"])
def case(request: pytest.FixtureRequest, gw: RunningGateway, stack: Stack) -> Case:
    return make_case(request.param, stack)


@pytest.fixture(autouse=True)
def bedrock_signed(stack: Stack) -> Iterator[None]:
    """The Bedrock fake answers 403 to a bad SigV4 signature: no normal flow may ever produce one."""
    yield
    rejected = [(r.path, r.json) for r in stack.brk.requests if r.status == 403 and r.fault is None]
    assert rejected == [], "the Bedrock fake rejected the gateway's signature"


def stream_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "stream": True, **extra}


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def events(r: httpx.Response) -> list[str]:
    """The SSE events' data, checking the framing: every event is exactly one ``data: ...`` line + a blank line."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    text = r.content.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for event in text[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, event
        out.append(event[len("data: ") :])
    return out


def broken_stream(r: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Assert a committed stream that broke: chunks, then exactly one error event, no [DONE]. Return both."""
    data = events(r)
    assert "[DONE]" not in data, "a broken stream must never look complete"
    parsed = [json.loads(d) for d in data]
    errors = [p for p in parsed if "error" in p]
    assert len(errors) == 1 and parsed[-1] is errors[0], data
    validate("ErrorResponse", errors[0])
    chunks = parsed[:-1]
    assert chunks, "the chunks before the failure reached the client"
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    err: dict[str, Any] = errors[0]["error"]
    return chunks, err


def requests_counted(gw: RunningGateway, tenant_id: str) -> int:
    gw.flush_usage()
    r = gw.admin("GET", f"/admin/tenants/{tenant_id}/usage")
    assert r.status_code == 200, r.text
    n: int = r.json()["requests"]
    return n


# -- before the commit point: an ordinary error response -------------------------------------------------------

EARLY = {
    "status-500": faults.status(500),
    "status-429": faults.status(429, retry_after="3"),
    "status-503": faults.status(503),
    "drop-after-0": faults.drop_after(0),
    "error-after-0": faults.error_after(0, "early kaboom"),
}


@pytest.mark.parametrize("fault", sorted(EARLY))
def test_failure_before_first_chunk_is_a_json_502(
    fault: str, case: Case, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    case.fake.inject(EARLY[fault])
    r = http.post(CHAT, json=stream_body(case.model))
    assert r.status_code == 502, r.text
    assert r.headers["content-type"].startswith("application/json"), "not a 200 stream"
    body = r.json()
    validate("ErrorResponse", body)
    assert f"{case.provider}/" in body["error"]["message"]
    assert len(r.headers["x-request-id"]) >= 16
    assert [(row["status"], row["stream"]) for row in ledger(gw, tenant.id)] == [(502, True)]
    healthy = http.post(CHAT, json=stream_body(case.model))
    assert text_of(validate_sse_stream(healthy.content)) == REPLY, "the gateway keeps serving"


# (model, fault, Bedrock's exception type, what the 502 quotes): the error arrives right after the stream's start
# event, which yields no chunk, so it is still before the commit point.
RATE_LIMITED = replace(faults.error_after(1, "slow down"), error_type="rate_limit_error")
AFTER_START: dict[str, tuple[str, faults.Fault, str, str]] = {
    "claude-overloaded": ("claude", faults.error_after(1), "", "overloaded_error"),
    "claude-rate-limit": ("claude", RATE_LIMITED, "", "slow down"),
    "bedrock-stream-error": ("bedrock", faults.error_after(1, "broke"), "modelStreamErrorException", "broke"),
    "bedrock-throttling": ("bedrock", faults.error_after(1, "easy now"), "throttlingException", "easy now"),
}


@pytest.mark.parametrize("name", sorted(AFTER_START))
def test_error_event_right_after_the_stream_start_is_a_json_502(
    name: str, http: httpx.Client, stack: Stack, gw: RunningGateway, tenant: TenantKey
) -> None:
    model, fault, exception_type, quoted = AFTER_START[name]
    case = make_case(model, stack)
    case.fake.inject(fault)
    try:
        if exception_type:
            stack.brk.stream_exception_type = exception_type
        r = http.post(CHAT, json=stream_body(case.model))
    finally:
        stack.brk.stream_exception_type = "modelStreamErrorException"
    assert case.fake.requests[0].chunks_sent == 1, "the upstream sent its start event, then the error"
    assert r.status_code == 502, r.text
    assert r.headers["content-type"].startswith("application/json"), "not a 200 stream"
    validate("ErrorResponse", r.json())
    assert f"{case.provider}/" in r.json()["error"]["message"] and quoted in r.json()["error"]["message"]
    assert [(row["status"], row["stream"]) for row in ledger(gw, tenant.id)] == [(502, True)]
    assert text_of(validate_sse_stream(http.post(CHAT, json=stream_body(case.model)).content)) == REPLY


def test_stream_timeout_before_first_chunk_is_504(http: httpx.Client, stack: Stack, gw: RunningGateway) -> None:
    stack.oai.inject(faults.hang())
    started = time.monotonic()
    r = http.post(CHAT, json=stream_body("slow-gpt"))
    assert r.status_code == 504, r.text
    assert time.monotonic() - started < 5
    validate("ErrorResponse", r.json())
    assert stack.oai.wait_for_disconnects(1, timeout=5)


# -- after the commit point: an error event, never [DONE] -----------------------------------------------------


def test_drop_mid_stream_ends_with_an_error_event(
    case: Case, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    case.fake.inject(faults.drop_after(case.mid))
    r = http.post(CHAT, json=stream_body(case.model))
    assert r.headers["x-aigw-provider"] == case.provider
    chunks, err = broken_stream(r)
    text = text_of(chunks)
    assert text and REPLY.startswith(text) and text != REPLY
    assert err["message"]
    assert requests_counted(gw, tenant.id) == 1
    assert [(row["status"], row["stream"]) for row in ledger(gw, tenant.id)] == [(502, True)]


def test_error_event_mid_stream_is_forwarded(
    case: Case, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    # Repeated: whether the error event shares a TCP read with the chunks before it must not matter.
    for attempt in range(10):
        case.fake.inject(faults.error_after(case.mid, f"boom: the model fell over #{attempt}"))
        _, err = broken_stream(http.post(CHAT, json=stream_body(case.model)))
        assert f"boom: the model fell over #{attempt}" in err["message"]
    assert requests_counted(gw, tenant.id) == 10
    assert [row["status"] for row in ledger(gw, tenant.id)] == [502] * 10


def raw_stream(case: Case, ending: str) -> faults.Fault:
    """Two content chunks then ``ending`` ("error": the provider's error event; "truncated": EOF without the
    terminal marker), as one body: the chunks and the failure reach the gateway in the same read."""
    if case.model == "gpt":
        frames = [
            {
                "id": "chatcmpl-raw",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
            }
            for delta in ({"role": "assistant", "content": "Echo:"}, {"content": " one"})
        ]
        body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
        error = {"error": {"message": "boom in one read", "type": "server_error", "param": None, "code": None}}
        tail = b"data: " + json.dumps(error).encode() + b"\n\n"
        content_type = "text/event-stream; charset=utf-8"
    elif case.model == "llama":
        lines = [
            {"model": "llama3:8b", "created_at": "2026-01-01T00:00:00Z", "message": m, "done": False}
            for m in ({"role": "assistant", "content": "Echo:"}, {"role": "assistant", "content": " one"})
        ]
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        tail = json.dumps({"error": "boom in one read"}).encode() + b"\n"
        content_type = "application/x-ndjson"
    elif case.model == "claude":
        usage = {"input_tokens": 8, "output_tokens": 1}
        start = {"id": "msg_raw", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": []}
        delta = {"type": "content_block_delta", "index": 0}
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": {**start, "stop_reason": None, "usage": usage}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *({**delta, "delta": {"type": "text_delta", "text": t}} for t in ("Echo:", " one")),
            {"type": "error", "error": {"type": "overloaded_error", "message": "boom in one read"}},
        ]
        sse = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
        body, tail, content_type = b"".join(sse[:-1]), sse[-1], "text/event-stream; charset=utf-8"
    else:
        deltas = [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}) for t in ("Echo:", " one")]
        body = b"".join(
            encode_message(event_headers(kind), json.dumps(p).encode())
            for kind, p in [("messageStart", {"role": "assistant"}), *deltas]
        )
        boom = json.dumps({"message": "boom in one read"}).encode()
        tail = encode_message(exception_headers("modelStreamErrorException"), boom)
        content_type = "application/vnd.amazon.eventstream"
    return faults.raw(200, body + (tail if ending == "error" else b""), content_type)


@pytest.mark.parametrize("ending", ["error", "truncated"])
def test_failure_in_the_same_read_as_the_first_chunks(
    ending: str, case: Case, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    # ADR 0003: committed once the first chunk has been read from the upstream, whatever arrives with it.
    case.fake.inject(raw_stream(case, ending))
    chunks, err = broken_stream(http.post(CHAT, json=stream_body(case.model)))
    assert text_of(chunks) == "Echo: one"
    if ending == "error":
        assert "boom in one read" in err["message"]
    assert [row["status"] for row in ledger(gw, tenant.id)] == [502]


@pytest.mark.parametrize("fault", ["drop", "error-same-read", "truncated"])
def test_sdk_raises_on_a_broken_stream(fault: str, case: Case, client: openai.OpenAI) -> None:
    case.fake.inject(
        {
            "drop": faults.drop_after(case.mid),
            "error-same-read": raw_stream(case, "error"),
            "truncated": raw_stream(case, "truncated"),
        }[fault]
    )
    received: list[Any] = []
    stream = client.chat.completions.create(model=case.model, messages=MSG, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)  # noqa: PERF402 - the chunks seen before the exception
    assert received, "the stream started (200) before it broke"
    assert not isinstance(info.value, openai.APIStatusError), "raised while iterating, not on the status"
    if fault.startswith("error"):
        assert "boom" in info.value.message


def test_upstream_silence_mid_stream_times_out_with_an_error_event(
    http: httpx.Client, stack: Stack, gw: RunningGateway, tenant: TenantKey
) -> None:
    stack.oai.inject(faults.stall_after(2))
    started = time.monotonic()
    r = http.post(CHAT, json=stream_body("slow-gpt"))
    assert time.monotonic() - started < 5, "timeout_s 0.5 bounds the silence between chunks"
    broken_stream(r)
    assert stack.oai.wait_for_disconnects(1, timeout=5), "the stalled upstream request was closed"
    assert [row["status"] for row in ledger(gw, tenant.id)] == [502]


# -- the client goes away ---------------------------------------------------------------------------------------


def test_client_disconnect_cancels_the_upstream(
    case: Case, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    case.fake.inject(faults.stall_after(case.mid))
    with http.stream("POST", CHAT, json=stream_body(case.model, user="abandon")) as r:
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first.startswith(b"data: {"), "chunks are forwarded as they arrive (the upstream is stalled)"
    assert case.fake.wait_for_disconnects(1, timeout=5), "the gateway cancelled the upstream request"
    assert case.fake.last_request.client_disconnected
    rows = wait_for_ledger(gw, tenant.id, 1)
    assert [(row["status"], row["stream"]) for row in rows] == [(499, True)]
    assert requests_counted(gw, tenant.id) == 1
    done = http.post(CHAT, json=stream_body(case.model))
    assert validate_sse_stream(done.content), "the gateway keeps serving"


def test_client_disconnect_while_streaming_slowly(
    case: Case, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    case.fake.inject(faults.slow(0.2))
    with http.stream("POST", CHAT, json=stream_body(case.model)) as r:
        assert next(r.iter_raw()).startswith(b"data: ")
    assert case.fake.wait_for_disconnects(1, timeout=5)
    assert [row["status"] for row in wait_for_ledger(gw, tenant.id, 1)] == [499]


# -- isolation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("breakage", ["stall", "drop"])
def test_healthy_stream_is_unaffected_by_another_tenants_broken_stream(
    breakage: str, case: Case, gw: RunningGateway, tenant: TenantKey
) -> None:
    other = gw.new_tenant("bystander")
    case.fake.inject(faults.stall_after(case.mid) if breakage == "stall" else faults.drop_after(case.mid))
    broken_started, healthy_done = threading.Event(), threading.Event()

    def broken() -> bytes:
        with (
            httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant.key}"}, timeout=10) as c,
            c.stream("POST", CHAT, json=stream_body(case.model)) as r,
        ):
            assert r.status_code == 200
            raw = r.iter_raw()
            first = next(raw)
            broken_started.set()
            assert healthy_done.wait(10)
            if breakage == "stall":
                return first  # leave while the upstream is still stalled
            return first + b"".join(raw)

    def healthy() -> bytes:
        assert broken_started.wait(10)
        assert case.fake.wait_for_requests(1)
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {other['api_key']}"}, timeout=10) as c:
            r = c.post(CHAT, json=stream_body(case.model))
        assert r.status_code == 200
        if breakage == "stall":
            assert not case.fake.requests[0].done.is_set(), "the broken stream was still open meanwhile"
        healthy_done.set()
        return r.content

    with ThreadPoolExecutor(2) as pool:
        broken_future, healthy_future = pool.submit(broken), pool.submit(healthy)
        healthy_raw = healthy_future.result(timeout=20)
        broken_raw = broken_future.result(timeout=20)

    chunks = validate_sse_stream(healthy_raw)
    assert text_of(chunks) == REPLY
    if breakage == "stall":
        assert case.fake.wait_for_disconnects(1, timeout=5)
    else:
        assert broken_raw.startswith(b"data: ") and b"data: [DONE]" not in broken_raw
    assert [row["status"] for row in ledger(gw, other["id"])] == [200]
    assert [row["status"] for row in wait_for_ledger(gw, tenant.id, 1)] == [499 if breakage == "stall" else 502]


# -- framing -------------------------------------------------------------------------------------------------


def test_stream_framing_and_headers(case: Case, http: httpx.Client) -> None:
    r = http.post(CHAT, json=stream_body(case.model, stream_options={"include_usage": True}))
    data = events(r)
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    assert r.headers["x-aigw-provider"] == case.provider
    assert r.headers["x-aigw-cache"] in ("miss", "bypass")
    assert len(r.headers["x-request-id"]) >= 16
    chunks = validate_sse_stream(r.content)
    assert len(chunks) == len(data) - 1 >= 3
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

    case.fake.inject(faults.drop_after(case.mid))
    broken = http.post(CHAT, json=stream_body(case.model))
    assert broken.headers["x-aigw-provider"] == case.provider and broken.headers["x-request-id"]
    broken_stream(broken)

"""AnthropicStreamDecoder: Anthropic SSE transcripts (tests/fixtures/anthropic/stream_*.sse) through the real SSE
framing into OpenAI chunks, each checked against the official CreateChatCompletionStreamResponse schema."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from aigw.errors import UpstreamError
from aigw.providers.anthropic import AnthropicAdapter
from aigw.providers.base import StreamDecoder, StreamIdentity, UpstreamEvent
from aigw.providers.framing import SSEParser
from aigw.schema.usage import Usage
from tests.support.openapi import validate
from tests.unit.test_anthropic_adapter import FIXTURES

IDENT = StreamIdentity(id="chatcmpl-abc123", created=1_751_900_000)
MODEL = "claude-sonnet-4-5"


def decoder(include_usage: bool = False) -> StreamDecoder:
    return AnthropicAdapter().stream_decoder(model=MODEL, include_usage=include_usage, ident=IDENT)


def parse(chunks: list[bytes]) -> list[dict[str, Any]]:
    out = [orjson.loads(c) for c in chunks]
    for c in out:
        validate("CreateChatCompletionStreamResponse", c)
    return out


def feed_fixture(dec: StreamDecoder, name: str, out: list[bytes]) -> None:
    """Feed a transcript through the real SSE parser, split at awkward places (every 7 bytes)."""
    parser, data = SSEParser(), (FIXTURES / name).read_bytes()
    for i in range(0, len(data), 7):
        for event in parser.feed(data[i : i + 7]):
            out.extend(dec.feed(event))
    for event in parser.close():
        out.extend(dec.feed(event))


def run_stream(name: str, *, include_usage: bool = False) -> tuple[StreamDecoder, list[dict[str, Any]]]:
    dec, out = decoder(include_usage), list[bytes]()
    feed_fixture(dec, name, out)
    out.extend(dec.finish())
    return dec, parse(out)


def ev(payload: dict[str, Any], name: str | None = None) -> UpstreamEvent:
    return UpstreamEvent(name or payload["type"], orjson.dumps(payload))


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def tool_parts(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for d in deltas(chunks) for tc in d.get("tool_calls", [])]


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1},
    },
}


def test_text_stream() -> None:
    dec, chunks = run_stream("stream_text.sse")
    # message_start and the empty text block emit nothing; the role rides on the first content chunk.
    assert deltas(chunks) == [
        {"role": "assistant", "content": "Hello"},
        {"content": " there"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-abc123", 1_751_900_000, "claude-sonnet-4-5-20250929", "chat.completion.chunk")
    }
    assert all("usage" not in c for c in chunks)  # not asked for …
    assert dec.usage == Usage(prompt_tokens=11, completion_tokens=6)  # … but recorded for metering anyway
    assert dec.response_model == "claude-sonnet-4-5-20250929"
    assert dec.finish_reason == "stop"


def test_usage_chunk_only_when_asked() -> None:
    dec, chunks = run_stream("stream_text.sse", include_usage=True)
    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 6,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert (last["id"], last["created"], last["model"]) == (
        "chatcmpl-abc123",
        1_751_900_000,
        "claude-sonnet-4-5-20250929",
    )
    assert all(c["usage"] is None for c in content)  # as OpenAI: null until the last chunk
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert dec.usage == Usage(prompt_tokens=11, completion_tokens=6)


def test_cache_usage_and_cumulative_output_tokens() -> None:
    dec, chunks = run_stream("stream_cache.sse", include_usage=True)
    # message_start said output_tokens 1, message_delta 393: a total, not an increment (393, not 394).
    assert dec.usage == Usage(
        prompt_tokens=2009, completion_tokens=393, cached_prompt_tokens=1800, cache_write_tokens=188
    )
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 2009,
        "completion_tokens": 393,
        "total_tokens": 2402,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }


def test_message_delta_counts_replace_message_start_counts_when_present() -> None:
    dec = decoder()
    dec.feed(ev(START))
    assert dec.usage == Usage(prompt_tokens=10, completion_tokens=1)  # known from message_start on
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 4, "input_tokens": 12, "cache_read_input_tokens": 3},
    }
    dec.feed(ev(delta))
    assert dec.usage == Usage(prompt_tokens=15, completion_tokens=4, cached_prompt_tokens=3)


def test_text_then_tool_use() -> None:
    dec, chunks = run_stream("stream_tool_use.sse")
    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "content": "I"}
    assert ds[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    parts = tool_parts(chunks)
    # The first input_json_delta is "" and emits nothing; fragments carry only index + arguments.
    assert [p["function"]["arguments"] for p in parts[1:]] == ['{"locati', 'on": "P', "ar", 'is"}']
    assert all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in parts[1:])
    assert json.loads("".join(p["function"]["arguments"] for p in parts)) == {"location": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=377, completion_tokens=65)


def test_parallel_tool_calls_get_their_own_indexes() -> None:
    _, chunks = run_stream("stream_parallel_tools.sse")
    parts = tool_parts(chunks)
    headers = [p for p in parts if "id" in p]
    # Content blocks 1, 2 and 3 (block 0 is text) are OpenAI tool calls 0, 1 and 2.
    assert [(h["index"], h["id"], h["function"]["name"]) for h in headers] == [
        (0, "toolu_01EW2XgYmjBkhCt3Hy8Lh5Lz", "get_weather"),
        (1, "toolu_01HHFQeqzs1Y8hdUkCe2oahL", "get_time"),
        (2, "toolu_01Pg8xHDNTkPAcT4e1VjEZ2n", "list_files"),
    ]
    arguments = {i: "".join(p["function"]["arguments"] for p in parts if p["index"] == i) for i in (0, 1, 2)}
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"location": "San Francisco, CA"},
        1: {"timezone": "America/Los_Angeles"},
        # No input streamed at all: "{}" is sent so the joined arguments still parse.
        2: {},
    }
    assert [p["index"] for p in parts] == sorted(p["index"] for p in parts)
    assert deltas(chunks)[0] == {"role": "assistant", "content": "Checking both."}
    assert sum("role" in d for d in deltas(chunks)) == 1


def test_tool_call_as_the_first_chunk_carries_the_role() -> None:
    dec = decoder()
    assert dec.feed(ev(START)) == ()
    block = {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {"tz": "UTC"}}
    (chunk,) = parse(list(dec.feed(ev({"type": "content_block_start", "index": 0, "content_block": block}))))
    # A block that arrives with its input already filled sends it as the header's arguments.
    assert chunk["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'},
            }
        ],
    }
    assert dec.feed(ev({"type": "content_block_stop", "index": 0})) == ()  # no "{}" on top of real arguments


@pytest.mark.parametrize(
    ("name", "finish", "text"),
    [
        ("stream_max_tokens.sse", "length", "Once upon a time, in a land far"),
        ("stream_stop_sequence.sse", "stop", "1, 2, 3, 4, "),
        ("stream_thinking.sse", "stop", "27 * 453 = 12,231"),
    ],
)
def test_finish_reasons_and_ignored_thinking(name: str, finish: str, text: str) -> None:
    dec, chunks = run_stream(name)
    ds = deltas(chunks)
    assert ds[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in ds) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == finish
    assert dec.finish_reason == finish


def test_finish_chunk_alone_still_sends_the_role() -> None:
    dec = decoder()
    dec.feed(ev(START))
    stop = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 0}}
    (chunk,) = parse(list(dec.feed(ev(stop))))
    assert chunk["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant"},
        "finish_reason": "length",
        "logprobs": None,
    }
    assert dec.feed(ev({"type": "message_stop"})) == ()
    assert dec.finish() == []


def test_message_stop_without_a_stop_reason_still_finishes() -> None:
    dec = decoder(include_usage=True)
    dec.feed(ev(START))
    dec.feed(ev({"type": "message_stop"}))
    first, usage = parse(list(dec.finish()))
    assert first["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 10


# ---- errors ------------------------------------------------------------------------------------------------


def test_error_right_after_message_start_emits_nothing_then_raises_529() -> None:
    # Nothing may reach the client before the error, or the gateway could not fall back to another target.
    dec, out = decoder(include_usage=True), list[bytes]()
    with pytest.raises(UpstreamError) as ei:
        feed_fixture(dec, "stream_error_after_start.sse", out)
    assert out == []
    err = ei.value
    assert (err.upstream_status, err.upstream_type) == (529, "overloaded_error")
    assert "Overloaded" in err.message
    assert err.falls_back


def test_error_mid_stream_raises_after_the_chunks_already_sent() -> None:
    dec, out = decoder(), list[bytes]()
    with pytest.raises(UpstreamError) as ei:
        feed_fixture(dec, "stream_error_midstream.sse", out)
    assert [d.get("content") for d in deltas(parse(out))] == ["The answer", " is"]
    assert (ei.value.upstream_status, ei.value.upstream_type) == (500, "api_error")
    assert dec.usage == Usage(prompt_tokens=25, completion_tokens=1)  # what was known, for metering


@pytest.mark.parametrize(
    ("etype", "status", "falls_back"),
    [
        ("overloaded_error", 529, True),
        ("rate_limit_error", 429, True),
        ("api_error", 500, True),
        ("timeout_error", 504, True),
        ("invalid_request_error", 400, False),
        ("something_new_error", 502, True),
    ],
)
def test_error_event_status(etype: str, status: int, falls_back: bool) -> None:
    dec = decoder()
    dec.feed(ev(START))
    with pytest.raises(UpstreamError) as ei:
        dec.feed(ev({"type": "error", "error": {"type": etype, "message": "boom"}}))
    assert (ei.value.upstream_status, ei.value.falls_back) == (status, falls_back)


@pytest.mark.parametrize("include_usage", [True, False])
def test_truncated_stream_raises_on_finish(include_usage: bool) -> None:
    dec, out = decoder(include_usage), list[bytes]()
    feed_fixture(dec, "stream_truncated.sse", out)
    assert len(out) == 2
    with pytest.raises(UpstreamError) as ei:
        dec.finish()
    assert ei.value.upstream_status == 502
    assert "message_stop" in ei.value.message


def test_unknown_and_unnamed_events_and_pings_are_skipped() -> None:
    dec = decoder()
    dec.feed(ev(START))
    assert dec.feed(UpstreamEvent("content_block_citation", b'{"type": "content_block_citation"}')) == ()
    assert dec.feed(UpstreamEvent(None, b'{"type": "message_stop"}')) == ()
    assert dec.feed(UpstreamEvent("ping", b'{"type": "ping"}')) == ()
    with pytest.raises(UpstreamError):
        dec.finish()  # the unnamed message_stop did not count


@pytest.mark.parametrize(
    "event",
    [
        UpstreamEvent("content_block_delta", b"not json"),
        UpstreamEvent("content_block_delta", b'{"type": "content_block_delta", "index": "x"}'),
        UpstreamEvent("message_start", b'{"type": "message_start"}'),
    ],
)
def test_malformed_known_events_raise_502(event: UpstreamEvent) -> None:
    with pytest.raises(UpstreamError) as ei:
        decoder().feed(event)
    assert ei.value.upstream_status == 502


def test_events_after_message_stop_are_ignored() -> None:
    dec = decoder()
    out: list[bytes] = []
    feed_fixture(dec, "stream_text.sse", out)
    assert dec.feed(ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})) == ()
    assert len(dec.finish()) == 0


def test_server_tool_blocks_are_not_client_tool_calls() -> None:
    # A server tool (web_search) streams like a tool_use block, but the client has nothing to run: skip it.
    dec = decoder()
    dec.feed(ev(START))
    server = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    assert dec.feed(ev({"type": "content_block_start", "index": 0, "content_block": server})) == ()
    fragment = {"type": "input_json_delta", "partial_json": '{"query": "x"}'}
    assert dec.feed(ev({"type": "content_block_delta", "index": 0, "delta": fragment})) == ()
    assert dec.feed(ev({"type": "content_block_stop", "index": 0})) == ()
    opened = {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Found it"}}
    (chunk,) = parse(list(dec.feed(ev(opened))))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "Found it"}

"""Streams and the cache (aigw.cache_stream): real translated streams assembled into ChatCompletions, and stored
completions replayed as chunks, all checked against the official OpenAI schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from aigw.cache_stream import StreamAssembler, replay_chunks
from aigw.errors import UpstreamError
from aigw.providers.base import StreamIdentity
from aigw.providers.framing import SSEParser
from tests.support.openapi import validate
from tests.unit.test_anthropic_stream import decoder, feed_fixture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDENT = StreamIdentity(id="chatcmpl-replay", created=1_770_000_000)
USAGE = {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 0}}


def anthropic_chunks(name: str) -> list[bytes]:
    dec, out = decoder(include_usage=True), list[bytes]()
    feed_fixture(dec, name, out)
    out.extend(dec.finish())
    return out


def openai_chunks() -> list[bytes]:
    parser = SSEParser()
    events = [*parser.feed((FIXTURES / "openai" / "stream_usage.sse").read_bytes()), *parser.close()]
    return [e.data for e in events if e.data != b"[DONE]"]


def assemble(chunks: list[bytes]) -> StreamAssembler:
    asm = StreamAssembler()
    for c in chunks:
        asm.feed(c)
    return asm


def completion_of(chunks: list[bytes]) -> dict[str, Any]:
    asm = assemble(chunks)
    assert asm.complete
    body: dict[str, Any] = orjson.loads(asm.completion(IDENT, USAGE))
    validate("CreateChatCompletionResponse", body)
    return body


def test_text_stream_assembles_to_its_completion() -> None:
    body = completion_of(anthropic_chunks("stream_text.sse"))
    assert body["id"] == IDENT.id and body["created"] == IDENT.created
    assert body["model"] == "claude-sonnet-4-5-20250929"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == USAGE


def test_parallel_tool_calls_assemble_in_index_order_with_whole_arguments() -> None:
    chunks = anthropic_chunks("stream_parallel_tools.sse")
    body = completion_of(chunks)
    message = body["choices"][0]["message"]
    calls = message["tool_calls"]
    indexes = {
        tc["index"]
        for c in map(orjson.loads, chunks)
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls", [])
    }
    assert len(calls) == len(indexes) == 3 and body["choices"][0]["finish_reason"] == "tool_calls"
    # The arguments are the concatenation of every fragment streamed for that index, and parse as JSON.
    for i, call in enumerate(calls):
        parts = [
            tc["function"].get("arguments", "")
            for c in map(orjson.loads, chunks)
            for ch in c["choices"]
            for tc in ch["delta"].get("tool_calls", [])
            if tc["index"] == i
        ]
        assert call["function"]["arguments"] == "".join(parts)
        orjson.loads(call["function"]["arguments"])
        assert call["id"] and call["type"] == "function" and call["function"]["name"]


def test_openai_passthrough_stream_keeps_the_system_fingerprint() -> None:
    body = completion_of(openai_chunks())
    assert body["model"] == "gpt-4o-2024-08-06" and body["system_fingerprint"] == "fp_1"
    assert body["choices"][0]["message"]["content"] == "Hello"


@pytest.mark.parametrize(
    "spoiler",
    [
        b'{"error": {"message": "overloaded", "type": "server_error"}}',
        b"not json",
        b'{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        b'[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[]},"finish_reason":null}]}',
    ],
)
def test_an_error_bad_chunk_or_logprobs_spoil_the_stream(spoiler: bytes) -> None:
    chunks = anthropic_chunks("stream_text.sse")
    assert assemble(chunks).complete
    assert not assemble([chunks[0], spoiler, *chunks[1:]]).complete


def test_a_stream_without_finish_reason_is_not_complete() -> None:
    chunks = anthropic_chunks("stream_text.sse")
    finished = [i for i, c in enumerate(chunks) if any(ch["finish_reason"] for ch in orjson.loads(c)["choices"])]
    assert finished
    assert not assemble(chunks[: finished[0]]).complete
    assert not StreamAssembler().complete


def test_a_stream_broken_midway_never_completes() -> None:
    dec, out = decoder(include_usage=True), list[bytes]()
    with pytest.raises(UpstreamError):
        feed_fixture(dec, "stream_error_midstream.sse", out)
    assert out and not assemble(out).complete


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("fixture", ["stream_text.sse", "stream_parallel_tools.sse", "stream_tool_use.sse"])
def test_replay_is_a_valid_stream_that_reassembles_to_the_same_completion(fixture: str, include_usage: bool) -> None:
    stored = completion_of(anthropic_chunks(fixture))
    ident = StreamIdentity(id="chatcmpl-second", created=1_770_000_500)
    replayed = replay_chunks(stored, ident, include_usage)
    parsed = [orjson.loads(c) for c in replayed]
    for c in parsed:
        validate("CreateChatCompletionStreamResponse", c)
        assert (c["id"], c["created"], c["model"]) == (ident.id, ident.created, stored["model"])
    usage_chunks = [c for c in parsed if not c["choices"]]
    if include_usage:
        assert usage_chunks == [parsed[-1]] and parsed[-1]["usage"] == stored["usage"]
        assert all(c["usage"] is None for c in parsed[:-1])
    else:
        assert usage_chunks == [] and all("usage" not in c for c in parsed)
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    again = orjson.loads(assemble(replayed).completion(ident, stored["usage"]))
    assert again == {**stored, "id": ident.id, "created": ident.created}


def test_replay_of_a_non_streamed_openai_answer() -> None:
    stored = orjson.loads((FIXTURES / "openai" / "chat.json").read_bytes())
    parsed = [orjson.loads(c) for c in replay_chunks(stored, IDENT, True)]
    for c in parsed:
        validate("CreateChatCompletionStreamResponse", c)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed if c["choices"])
    assert text == stored["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in parsed if c["choices"]][-1] == stored["choices"][0][
        "finish_reason"
    ]

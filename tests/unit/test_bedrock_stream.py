"""BedrockStreamDecoder: binary ConverseStream captures (tests/fixtures/bedrock/*.bin) → OpenAI chunks, through the
real event-stream parser fed in awkward pieces. Every chunk is checked against the official OpenAI chunk schema."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from aigw.errors import UpstreamError
from aigw.providers.base import StreamDecoder, StreamIdentity, UpstreamEvent
from aigw.providers.bedrock import BedrockAdapter, BedrockStreamDecoder
from aigw.providers.bedrock.request import NO_TOOLS_PLACEHOLDER
from aigw.providers.eventstream import EventStreamParser, encode_message, event_headers, exception_headers
from aigw.schema.usage import Usage
from tests.support import openapi

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bedrock"
IDENT = StreamIdentity(id="chatcmpl-bedrock123", created=1_764_000_000)
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_bedrock_fixtures", FIXTURES / "build_bedrock_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _builder()


def test_binary_fixtures_are_what_the_builder_makes() -> None:
    builders: dict[str, Callable[[], bytes]] = BUILD.FIXTURES
    assert sorted(p.name for p in FIXTURES.glob("*.bin")) == sorted(builders)
    for name, build in builders.items():
        assert (FIXTURES / name).read_bytes() == build(), f"{name} drifted: rerun build_bedrock_fixtures.py"


def decoder(include_usage: bool = False, *, single_tool_call: bool = False) -> StreamDecoder:
    return BedrockAdapter().stream_decoder(
        model=MODEL, include_usage=include_usage, ident=IDENT, single_tool_call=single_tool_call
    )


def run(
    data: bytes, *, include_usage: bool = False, step: int = 7, single_tool_call: bool = False
) -> tuple[StreamDecoder, list[dict[str, Any]]]:
    """Parse and decode ``data`` fed ``step`` bytes at a time; validate every chunk."""
    dec, parser, out = decoder(include_usage, single_tool_call=single_tool_call), EventStreamParser(), list[bytes]()
    for i in range(0, len(data), step):
        for event in parser.feed(data[i : i + step]):
            out.extend(dec.feed(event))
    for event in parser.close():
        out.extend(dec.feed(event))
    out.extend(dec.finish())
    chunks = [orjson.loads(c) for c in out]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    return dec, chunks


def run_fixture(name: str, **kw: Any) -> tuple[StreamDecoder, list[dict[str, Any]]]:
    return run((FIXTURES / name).read_bytes(), **kw)


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def event(kind: str, payload: dict[str, Any]) -> UpstreamEvent:
    return UpstreamEvent(kind, json.dumps(payload).encode())


# ---- text ----------------------------------------------------------------------------------------------------------


def test_stream_text() -> None:
    dec, chunks = run_fixture("stream_text.bin")
    # messageStart emits nothing: the role rides on the first content chunk.
    assert deltas(chunks)[0] == {"role": "assistant", "content": "Rayleigh"}
    assert all("role" not in d for d in deltas(chunks)[1:])
    assert "".join(d.get("content", "") for d in deltas(chunks)) == "Rayleigh scattering makes the sky blue."
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["stop"]
    assert deltas(chunks)[-1] == {}
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-bedrock123", 1_764_000_000, MODEL, "chat.completion.chunk")
    }
    assert all("usage" not in c for c in chunks)  # not asked for...
    assert dec.usage == Usage(prompt_tokens=25, completion_tokens=9)  # ...but metered anyway
    assert (dec.finish_reason, dec.response_model) == ("stop", MODEL)


def test_usage_chunk_when_include_usage() -> None:
    _, chunks = run_fixture("stream_text.bin", include_usage=True)
    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 9,
        "total_tokens": 34,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert all(c["usage"] is None for c in content)  # as OpenAI: null until the last chunk
    assert content[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("step", [1, 12, 13, 100, 10_000])
def test_chunking_does_not_matter(step: int) -> None:
    assert run_fixture("stream_tools.bin", step=step)[1] == run_fixture("stream_tools.bin", step=7)[1]


def test_stream_max_tokens() -> None:
    dec, chunks = run_fixture("stream_max_tokens.bin")
    assert "".join(d.get("content", "") for d in deltas(chunks)) == "Once upon a time, in a"
    assert chunks[-1]["choices"][0]["finish_reason"] == dec.finish_reason == "length"


# ---- tools -------------------------------------------------------------------------------------------------------


def test_stream_parallel_tool_calls() -> None:
    dec, chunks = run_fixture("stream_tools.bin", include_usage=True)
    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "content": "I'll look"}
    calls = [tc for d in ds for tc in d.get("tool_calls", [])]
    # Content blocks 1, 2, 3 become OpenAI tool calls 0, 1, 2; each call opens with id/type/name and "".
    headers = [(tc["index"], tc["id"], tc["type"], tc["function"]) for tc in calls if "id" in tc]
    assert headers == [
        (0, "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "function", {"name": "get_weather", "arguments": ""}),
        (1, "tooluse_Xb9L2mGQTkWPqz0H7dY1sA", "function", {"name": "get_weather", "arguments": ""}),
        (2, "tooluse_3fHq8TnWRbuJ5kPpLx2v9g", "function", {"name": "get_time", "arguments": ""}),
    ]
    arguments: dict[int, str] = {}
    for tc in calls:
        arguments[tc["index"]] = arguments.get(tc["index"], "") + tc["function"]["arguments"]
        if "id" not in tc:
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
            assert tc["function"]["arguments"]  # the empty input fragment is not forwarded
    # The argument-less call streams no input: "{}" keeps the client's accumulated arguments valid JSON.
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"city": "Paris", "unit": "c"},
        1: {"city": "Tokyo", "unit": "c"},
        2: {},
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=495, completion_tokens=146, cached_prompt_tokens=100, cache_write_tokens=20)
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 100}


def tool_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for d in deltas(chunks) for tc in d.get("tool_calls", [])]


@pytest.mark.parametrize("include_usage", [True, False])
def test_parallel_tool_calls_false_streams_only_the_first_call(include_usage: bool) -> None:
    # Converse cannot be told parallel_tool_calls: false: the blocks of the second and third calls (start, input
    # deltas, stop) are dropped, the text and the first call stream as usual.
    dec, chunks = run_fixture("stream_tools.bin", include_usage=include_usage, single_tool_call=True)
    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "content": "I'll look"}
    calls = tool_calls(chunks)
    assert all(tc["index"] == 0 for tc in calls)
    assert [(tc["id"], tc["function"]["name"]) for tc in calls if "id" in tc] == [
        ("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "get_weather")
    ]
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Paris", "unit": "c"}
    finish = chunks[-2 if include_usage else -1]["choices"][0]
    assert finish["finish_reason"] == dec.finish_reason == "tool_calls" and finish["delta"] == {}
    # The dropped calls' tokens were still generated (and billed) upstream.
    assert dec.usage == Usage(prompt_tokens=495, completion_tokens=146, cached_prompt_tokens=100, cache_write_tokens=20)
    if include_usage:
        assert chunks[-1]["usage"]["completion_tokens"] == 146


@pytest.mark.parametrize(("single_tool_call", "ids"), [(True, ["tooluse_a"]), (False, ["tooluse_a", "tooluse_b"])])
def test_two_parallel_calls_without_text(single_tool_call: bool, ids: list[str]) -> None:
    data = b"".join(
        [
            BUILD.start(),
            BUILD.tool_start(0, "tooluse_a", "get_weather"),
            BUILD.tool_input(0, '{"city": "Paris"}'),
            BUILD.stop_block(0),
            BUILD.tool_start(1, "tooluse_b", "get_time"),
            BUILD.tool_input(1, '{"city": "Paris"}'),
            BUILD.stop_block(1),
            BUILD.stop("tool_use"),
            BUILD.metadata(20, 40),
        ]
    )
    dec, chunks = run(data, single_tool_call=single_tool_call)
    calls = tool_calls(chunks)
    assert [tc["id"] for tc in calls if "id" in tc] == ids
    assert sorted({tc["index"] for tc in calls}) == list(range(len(ids)))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=20, completion_tokens=40)


def test_single_tool_call_keeps_the_first_real_call_after_a_placeholder_call() -> None:
    data = b"".join(
        [
            BUILD.start(),
            BUILD.tool_start(0, "tooluse_x", NO_TOOLS_PLACEHOLDER),
            BUILD.tool_input(0, "{}"),
            BUILD.stop_block(0),
            BUILD.tool_start(1, "tooluse_b", "get_time"),
            BUILD.stop_block(1),
            BUILD.stop("tool_use"),
            BUILD.metadata(5, 3),
        ]
    )
    _, chunks = run(data, single_tool_call=True)
    calls = tool_calls(chunks)
    assert [(tc["index"], tc.get("id"), tc["function"]["arguments"]) for tc in calls] == [
        (0, "tooluse_b", ""),
        (0, None, "{}"),
    ]


def test_a_dropped_call_started_twice_is_still_an_error() -> None:
    dec = decoder(single_tool_call=True)
    dec.feed(
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "a", "name": "f"}}})
    )
    second = {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "b", "name": "f"}}}
    assert dec.feed(event("contentBlockStart", second)) == ()
    with pytest.raises(UpstreamError, match="twice"):
        dec.feed(event("contentBlockStart", second))


def test_a_call_to_the_no_tools_placeholder_is_not_streamed() -> None:
    data = b"".join(
        [
            BUILD.start(),
            BUILD.text(0, "Sure."),
            BUILD.stop_block(0),
            BUILD.tool_start(1, "tooluse_x", NO_TOOLS_PLACEHOLDER),
            BUILD.tool_input(1, "{}"),
            BUILD.stop_block(1),
            BUILD.stop("tool_use"),
            BUILD.metadata(5, 3),
        ]
    )
    dec, chunks = run(data)
    assert deltas(chunks) == [{"role": "assistant", "content": "Sure."}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == dec.finish_reason == "stop"


def test_tool_input_for_an_unstarted_block_is_an_error() -> None:
    dec = decoder()
    with pytest.raises(UpstreamError, match="never started"):
        dec.feed(event("contentBlockDelta", {"contentBlockIndex": 4, "delta": {"toolUse": {"input": "{}"}}}))


def test_a_block_started_twice_is_an_error() -> None:
    dec = decoder()
    start = {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}}
    dec.feed(event("contentBlockStart", start))
    with pytest.raises(UpstreamError, match="twice"):
        dec.feed(event("contentBlockStart", start))


# ---- errors and truncation ----------------------------------------------------------------------------------------


def test_exception_frame_mid_stream() -> None:
    data = (FIXTURES / "stream_exception.bin").read_bytes()
    dec, parser, emitted = decoder(), EventStreamParser(), list[bytes]()
    with pytest.raises(UpstreamError) as ei:
        for ev in parser.feed(data):
            emitted.extend(dec.feed(ev))
    assert [orjson.loads(c)["choices"][0]["delta"] for c in emitted] == [
        {"role": "assistant", "content": "Hello"},
        {"content": " there"},
    ]
    err = ei.value
    assert err.message == "Bedrock modelStreamErrorException: Model stream was interrupted. Try your request again."
    assert (err.upstream_status, err.falls_back) == (502, True)


def test_exception_before_any_content_emits_nothing() -> None:
    # Nothing may reach the client before the error, or the gateway could not fall back to another target.
    data = (FIXTURES / "stream_throttled.bin").read_bytes()
    dec, events = decoder(), EventStreamParser().feed(data)
    assert dec.feed(events[0]) == ()  # messageStart
    with pytest.raises(UpstreamError) as ei:
        dec.feed(events[1])
    assert (ei.value.upstream_status, ei.value.falls_back) == (429, True)
    assert "Too many tokens" in ei.value.message


@pytest.mark.parametrize(
    ("kind", "status", "falls_back"),
    [
        ("throttlingException", 429, True),
        ("internalServerException", 500, True),
        ("serviceUnavailableException", 503, True),
        ("modelStreamErrorException", 502, True),
        ("validationException", 400, False),
        ("someNewException", 502, True),
    ],
)
def test_exception_types_map_to_statuses(kind: str, status: int, falls_back: bool) -> None:
    frame = encode_message(exception_headers(kind), b'{"message":"nope"}')
    (ev,) = EventStreamParser().feed(frame)
    with pytest.raises(UpstreamError) as ei:
        decoder().feed(ev)
    assert (ei.value.upstream_status, ei.value.falls_back) == (status, falls_back)
    assert ei.value.message == f"Bedrock {kind}: nope"


def test_protocol_error_frame() -> None:
    frame = encode_message({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}, b"")
    (ev,) = EventStreamParser().feed(frame)
    with pytest.raises(UpstreamError) as ei:
        decoder().feed(ev)
    assert ei.value.upstream_status == 502
    assert ei.value.message == "Bedrock stream error InternalFailure: boom"


def test_truncated_stream_fails_in_the_parser() -> None:
    with pytest.raises(UpstreamError, match="ended inside a frame"):
        run_fixture("stream_truncated.bin")


def test_corrupt_stream_fails_in_the_parser() -> None:
    with pytest.raises(UpstreamError, match="message CRC mismatch"):
        run_fixture("stream_corrupt.bin")


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_without_metadata_is_not_a_clean_end(include_usage: bool) -> None:
    data = BUILD.start() + BUILD.text(0, "hi") + BUILD.stop_block(0) + BUILD.stop("end_turn")
    with pytest.raises(UpstreamError, match="metadata"):
        run(data, include_usage=include_usage)


def test_stream_without_message_stop_is_not_a_clean_end() -> None:
    data = BUILD.start() + BUILD.text(0, "hi") + BUILD.metadata(1, 1)
    with pytest.raises(UpstreamError, match="messageStop"):
        run(data)


def test_stream_with_only_a_stop_still_sends_the_role() -> None:
    _, chunks = run(BUILD.start() + BUILD.stop("end_turn") + BUILD.metadata(3, 0))
    assert chunks == [
        {
            "id": "chatcmpl-bedrock123",
            "object": "chat.completion.chunk",
            "created": 1_764_000_000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop", "logprobs": None}],
        }
    ]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("contentBlockDelta", b'{"delta": {"text": "x"}}'),  # contentBlockIndex is required
        ("messageStop", b"{}"),
        ("metadata", b"not json"),
        ("contentBlockStart", b'{"contentBlockIndex": "zero", "start": {}}'),
    ],
)
def test_malformed_events(kind: str, payload: bytes) -> None:
    with pytest.raises(UpstreamError, match="malformed") as ei:
        decoder().feed(UpstreamEvent(kind, payload))
    assert ei.value.upstream_status == 502


def test_unknown_events_and_block_kinds_are_ignored() -> None:
    dec = decoder()
    assert dec.feed(UpstreamEvent("initial-response", b"{}")) == ()
    reasoning = {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "thinking..."}}}
    assert dec.feed(event("contentBlockDelta", reasoning)) == ()
    assert dec.feed(event("contentBlockStart", {"contentBlockIndex": 0, "start": {"image": {}}})) == ()
    assert dec.feed(event("contentBlockStop", {"contentBlockIndex": 0})) == ()


def test_decoder_is_the_exported_class() -> None:
    assert isinstance(decoder(), BedrockStreamDecoder)
    frame = encode_message(event_headers("messageStart"), b'{"role":"assistant","p":"abc"}')
    assert decoder().feed(EventStreamParser().feed(frame)[0]) == ()

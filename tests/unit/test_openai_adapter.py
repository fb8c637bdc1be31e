from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from aigw.errors import UpstreamError
from aigw.providers.base import ChatInput, StreamIdentity
from aigw.providers.framing import SSEParser
from aigw.providers.openai import OpenAIAdapter
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.usage import Usage

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "openai"
IDENT = StreamIdentity("chatcmpl-x", 1)


def chat_input(raw: dict[str, Any]) -> ChatInput:
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


def run_stream(include_usage: bool, transcript: bytes) -> tuple[list[bytes], Usage | None]:
    dec = OpenAIAdapter().stream_decoder(model="gpt-4o", include_usage=include_usage, ident=IDENT)
    out: list[bytes] = []
    parser = SSEParser()
    for ev in parser.feed(transcript) + parser.close():
        out += dec.feed(ev)
    out += dec.finish()
    return out, dec.usage


def test_encode_passes_unknown_fields_and_forces_stream_usage() -> None:
    raw = {
        "model": "alias",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "reasoning_effort": "low",
        "metadata": {"k": "v"},
    }
    up = OpenAIAdapter().encode_chat(chat_input(raw), model="gpt-4o", stream=True)
    body = orjson.loads(up.body)
    assert up.path == "/chat/completions"
    assert body["model"] == "gpt-4o" and body["reasoning_effort"] == "low" and body["metadata"] == {"k": "v"}
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert raw == {**raw, "model": "alias", "stream_options": {"include_obfuscation": False}}  # input not mutated


def test_stream_usage_chunk_stripped_unless_asked() -> None:
    transcript = (FIX / "stream_usage.sse").read_bytes()
    hidden, usage = run_stream(False, transcript)
    shown, usage2 = run_stream(True, transcript)
    assert len(hidden) == 3 and len(shown) == 4
    assert orjson.loads(shown[-1])["choices"] == []
    assert usage == usage2 == Usage(prompt_tokens=9, completion_tokens=1, cached_prompt_tokens=4)


def test_stream_without_done_is_an_error() -> None:
    transcript = (FIX / "stream_usage.sse").read_bytes().replace(b"data: [DONE]\n\n", b"")
    with pytest.raises(UpstreamError, match="DONE"):
        run_stream(False, transcript)


def test_stream_error_event_raises() -> None:
    with pytest.raises(UpstreamError, match="overloaded"):
        run_stream(False, b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')


def test_decode_chat_serves_upstream_bytes_and_reads_usage() -> None:
    body = (FIX / "chat.json").read_bytes()
    c = OpenAIAdapter().decode_chat(body, model="gpt-4o", ident=IDENT)
    assert c.body is body and c.finish_reason == "stop" and c.response_model == "gpt-4o-2024-08-06"
    assert c.usage == Usage(prompt_tokens=9, completion_tokens=2)


@pytest.mark.parametrize(
    ("status", "falls_back", "client_status"),
    [
        (400, False, 400),
        (422, False, 422),
        (401, True, 502),
        (404, True, 502),
        (429, True, 502),
        (500, True, 502),
        (503, True, 502),
    ],
)
def test_error_decoding_and_fallback_rule(status: int, falls_back: bool, client_status: int) -> None:
    body = orjson.dumps(
        {"error": {"message": "nope", "type": "invalid_request_error", "param": "messages", "code": None}}
    )
    err = OpenAIAdapter().decode_error(status, body, {"retry-after": "3"})
    assert err.message == "nope" and err.upstream_status == status and err.retry_after == 3.0
    assert err.falls_back is falls_back and err.http_status == client_status


def test_error_with_non_json_body() -> None:
    err = OpenAIAdapter().decode_error(502, b"<html>bad gateway</html>", {})
    assert err.message == "upstream returned HTTP 502" and err.falls_back


ROLE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}]}\n\n'
)


def test_role_only_opening_chunk_is_held_until_content() -> None:
    # An error right after OpenAI's opening role chunk must still come before the commit point (ADR 0003).
    dec = OpenAIAdapter().stream_decoder(model="m", include_usage=False, ident=IDENT)
    parser = SSEParser()
    (role,) = parser.feed(ROLE)
    assert dec.feed(role) == ()
    (err,) = parser.feed(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    with pytest.raises(UpstreamError, match="overloaded"):
        dec.feed(err)


def test_held_role_chunk_is_released_with_the_first_content() -> None:
    transcript = (FIX / "stream_usage.sse").read_bytes()
    dec = OpenAIAdapter().stream_decoder(model="gpt-4o", include_usage=False, ident=IDENT)
    parser = SSEParser()
    emitted = [dec.feed(ev) for ev in parser.feed(transcript)]
    assert len(emitted[0]) == 0 and len(emitted[1]) == 2  # role chunk + "Hello", released together
    assert orjson.loads(emitted[1][0])["choices"][0]["delta"]["role"] == "assistant"


def test_role_only_stream_still_emits_its_chunk_at_the_end() -> None:
    dec = OpenAIAdapter().stream_decoder(model="m", include_usage=False, ident=IDENT)
    parser = SSEParser()
    out = [c for ev in parser.feed(ROLE + b"data: [DONE]\n\n") for c in dec.feed(ev)]
    assert out == [] and len(dec.finish()) == 1


def test_reasoning_and_audio_deltas_are_not_held_back() -> None:
    """OpenAI-compatible servers stream reasoning text (``reasoning_content``, ``reasoning``) before any content,
    OpenAI streams audio deltas: they pass as they come, not held until content arrives."""
    opening = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null}}]}\n\n'
    reasoning = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}\n\n'
    audio = b'data: {"choices":[{"index":0,"delta":{"audio":{"id":"a1","data":"AAA="}}}]}\n\n'
    dec = OpenAIAdapter().stream_decoder(model="gpt-4o", include_usage=False, ident=IDENT)
    parser = SSEParser()
    assert [dec.feed(ev) for ev in parser.feed(opening)] == [()], "the bare opening is still held"
    (sent,) = [dec.feed(ev) for ev in parser.feed(reasoning)]
    assert len(sent) == 2 and b"think" in sent[1], "the held opening, then the reasoning delta"
    (sent,) = [dec.feed(ev) for ev in parser.feed(audio)]
    assert len(sent) == 1 and b"AAA=" in sent[0]


def test_nothing_after_done_is_forwarded() -> None:
    transcript = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"late"}}]}\n\n'
    )
    out, _ = run_stream(False, transcript)
    assert not any(b"late" in chunk for chunk in out)

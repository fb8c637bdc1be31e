"""AnthropicAdapter against FakeAnthropic over real HTTP: what the adapter encodes must pass the Messages rules the
fake enforces, and what the fake answers must decode into schema-valid OpenAI bodies and chunks. This is the chain
the gateway runs, minus its transport; OpenAI-side conversations are built from the decoded answers, so a tool
call's id and arguments make the full trip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest

from aigw.errors import UpstreamError
from aigw.providers.anthropic import AnthropicAdapter
from aigw.providers.base import ChatInput, Completion, StreamIdentity
from aigw.providers.framing import SSEParser
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.usage import Usage
from tests.fakes import faults
from tests.fakes.anthropic_fake import FakeAnthropic, Invalid, check_request
from tests.support.openapi import validate

IDENT = StreamIdentity(id="chatcmpl-rt", created=1_751_900_000)
MODEL = "claude-haiku-4-5"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


def chat(messages: list[dict[str, Any]], **fields: Any) -> ChatInput:
    raw = {"model": "claude", "messages": messages, **fields}
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


def send(fake: FakeAnthropic, adapter: AnthropicAdapter, request: ChatInput, *, stream: bool) -> httpx.Response:
    up = adapter.encode_chat(request, model=MODEL, stream=stream)
    # The gateway's signer adds x-api-key; everything else comes from the adapter.
    headers = {**up.headers, "x-api-key": fake.api_key or ""}
    return httpx.post(fake.base_url + up.path, content=up.body, headers=headers, timeout=10)


def complete(fake: FakeAnthropic, messages: list[dict[str, Any]], **fields: Any) -> tuple[Completion, dict[str, Any]]:
    adapter = AnthropicAdapter()
    resp = send(fake, adapter, chat(messages, **fields), stream=False)
    if resp.status_code != 200:
        raise adapter.decode_error(resp.status_code, resp.content, resp.headers)
    completion = adapter.decode_chat(resp.content, model=MODEL, ident=IDENT)
    body: dict[str, Any] = orjson.loads(completion.body)
    validate("CreateChatCompletionResponse", body)
    return completion, body


def stream(
    fake: FakeAnthropic, messages: list[dict[str, Any]], *, include_usage: bool = False, **fields: Any
) -> tuple[Any, list[dict[str, Any]]]:
    adapter = AnthropicAdapter()
    resp = send(fake, adapter, chat(messages, **fields), stream=True)
    assert resp.status_code == 200, resp.text
    dec, parser = adapter.stream_decoder(model=MODEL, include_usage=include_usage, ident=IDENT), SSEParser()
    out = [c for e in parser.feed(resp.content) + parser.close() for c in dec.feed(e)]
    out.extend(dec.finish())
    chunks = [orjson.loads(c) for c in out]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    return dec, chunks


HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello   there\nworld"}]


def test_text(fake: FakeAnthropic) -> None:
    completion, body = complete(fake, HELLO)
    assert body["choices"][0]["message"]["content"] == "Echo: hello there world"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert completion.usage == Usage(prompt_tokens=5, completion_tokens=4)  # the OpenAI fake's numbers too
    assert body["model"] == MODEL


def test_stop_and_length(fake: FakeAnthropic) -> None:
    _, body = complete(fake, HELLO, stop="there")
    assert (body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]) == ("Echo: hello ", "stop")
    _, body = complete(fake, HELLO, max_completion_tokens=2)
    assert (body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]) == ("Echo: hello", "length")


def test_parallel_tool_calls_then_results_round_trip(fake: FakeAnthropic) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather and time in parallel"}]
    _, body = complete(fake, messages, tools=TOOLS)
    assistant = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    calls = assistant["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "weather and time in parallel"}
    # The client runs the tools and sends the results back, OpenAI-style: one tool message per call.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "11 degrees"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "14:05"},
    ]
    _, body = complete(fake, messages, tools=TOOLS)
    assert body["choices"][0]["message"]["content"] == "Echo: 14:05"
    _, one = complete(fake, messages[:1], tools=TOOLS, parallel_tool_calls=False)
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1
    _, named = complete(
        fake, messages[:1], tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert [c["function"]["name"] for c in named["choices"][0]["message"]["tool_calls"]] == ["get_time"]


def test_streamed_parallel_tool_calls(fake: FakeAnthropic) -> None:
    dec, chunks = stream(fake, [{"role": "user", "content": "both, in parallel"}], tools=TOOLS, include_usage=True)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    parts = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    args = {i: "".join(p["function"]["arguments"] for p in parts if p["index"] == i) for i in (0, 1)}
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"city": "both, in parallel"}, 1: {}}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == dec.usage.completion_tokens


def test_streamed_text_usage_matches_the_plain_answer(fake: FakeAnthropic) -> None:
    completion, _ = complete(fake, HELLO)
    dec, chunks = stream(fake, HELLO)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Echo: hello there world"
    assert all("usage" not in c for c in chunks)
    assert dec.usage == completion.usage


def test_images_and_structured_output(fake: FakeAnthropic) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "describe"}, image]}]
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    rf = {"type": "json_schema", "json_schema": {"name": "d", "schema": schema}}
    _, body = complete(fake, messages, response_format=rf)
    assert json.loads(body["choices"][0]["message"]["content"]) == {"text": "describe"}


def test_cache_control_reaches_the_cache_and_usage_comes_back(fake: FakeAnthropic) -> None:
    policy: dict[str, Any] = {
        "role": "system",
        "content": "the same long policy, every time",
        "cache_control": {"type": "ephemeral"},
    }
    messages = [policy, {"role": "user", "content": "a question about caching"}]
    first, _ = complete(fake, messages)
    second, body = complete(fake, messages)
    assert first.usage == Usage(prompt_tokens=10, completion_tokens=5, cache_write_tokens=6)
    assert second.usage == Usage(prompt_tokens=10, completion_tokens=5, cached_prompt_tokens=6)
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 6}


def test_sampling_parameters_follow_the_configured_version(fake: FakeAnthropic) -> None:
    for version in ("2023-06-01", "2026-10-21"):
        adapter = AnthropicAdapter(anthropic_version=version)
        resp = send(fake, adapter, chat(HELLO, temperature=1.8, top_p=0.5), stream=False)
        assert resp.status_code == 200, (version, resp.text)
    assert fake.last_request.headers["anthropic-version"] == "2026-10-21"
    assert "temperature" not in fake.last_request.json


@pytest.mark.parametrize(
    ("status", "exc_type"), [(429, "rate_limit_error"), (529, "overloaded_error"), (500, "api_error")]
)
def test_upstream_errors_fall_back_with_their_status(fake: FakeAnthropic, status: int, exc_type: str) -> None:
    fake.inject(faults.status(status, retry_after="3"))
    with pytest.raises(UpstreamError) as ei:
        complete(fake, HELLO)
    assert (ei.value.upstream_status, ei.value.upstream_type, ei.value.retry_after) == (status, exc_type, 3.0)
    assert ei.value.falls_back


def test_request_errors_do_not_fall_back(fake: FakeAnthropic) -> None:
    with pytest.raises(UpstreamError) as ei:
        complete(fake, HELLO, tools=[{"type": "function", "function": {"name": "bad name"}}])
    assert (ei.value.upstream_status, ei.value.upstream_type) == (400, "invalid_request_error")
    assert not ei.value.falls_back and ei.value.http_status == 400


@pytest.mark.parametrize(("after", "emitted"), [(1, 0), (5, 2)])
def test_error_event_in_the_stream(fake: FakeAnthropic, after: int, emitted: int) -> None:
    # Frames: message_start, content_block_start, ping, "Echo:", " hello", … — after 1 frame nothing has been
    # emitted (the gateway can still fall back); after 5, two content chunks went out before the error.
    fake.inject(faults.error_after(after))
    adapter = AnthropicAdapter()
    resp = send(fake, adapter, chat(HELLO), stream=True)
    dec, out = adapter.stream_decoder(model=MODEL, include_usage=False, ident=IDENT), list[bytes]()
    with pytest.raises(UpstreamError) as ei:
        for event in SSEParser().feed(resp.content):
            out.extend(dec.feed(event))
    assert len(out) == emitted
    assert (ei.value.upstream_status, ei.value.upstream_type) == (529, "overloaded_error")
    assert ei.value.falls_back


def _call(cid: str, name: str = "get_time", arguments: str = "{}") -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


ASK = {"role": "user", "content": "go"}
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "user text between the call and its results": [
        ASK,
        {"role": "assistant", "content": "on it", "tool_calls": [_call("call_a"), _call("call_b")]},
        {"role": "user", "content": "hurry"},
        {"role": "tool", "tool_call_id": "call_b", "content": "b"},
        {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "a"}]},
    ],
    "tool ids from another provider": [
        ASK,
        {"role": "assistant", "tool_calls": [_call("tooluse:bedrock.1"), _call("fn|2")]},
        {"role": "tool", "tool_call_id": "tooluse:bedrock.1", "content": "1"},
        {"role": "tool", "tool_call_id": "fn|2", "content": "2"},
    ],
    "system messages everywhere and repeated roles": [
        {"role": "system", "content": "one"},
        ASK,
        {"role": "developer", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
        {"role": "assistant", "content": "x"},
        {"role": "assistant", "content": [{"type": "text", "text": "y"}]},
        {"role": "system", "content": "three"},
        {"role": "user", "content": "z"},
    ],
    "empty messages in between": [
        ASK,
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "next"},
    ],
    "deprecated function call": [
        ASK,
        {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": ""}},
        {"role": "function", "name": "get_time", "content": "14:05"},
    ],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_encoded_conversations_pass_the_messages_rules(name: str) -> None:
    up = AnthropicAdapter().encode_chat(chat(CONVERSATIONS[name], tools=TOOLS), model=MODEL, stream=False)
    check_request(orjson.loads(up.body), "2023-06-01")


def test_the_rules_refuse_openai_shaped_messages() -> None:
    # The control: forwarding OpenAI's shape as-is is exactly what the fake must refuse.
    for messages in CONVERSATIONS.values():
        with pytest.raises(Invalid):
            check_request({"model": MODEL, "max_tokens": 10, "messages": messages}, "2023-06-01")

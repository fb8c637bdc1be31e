"""FakeOpenAI speaks the real protocol: driven by the official ``openai`` SDK, raw bodies checked against the
official OpenAPI schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.fakes import text
from tests.fakes.openai_fake import FakeOpenAI
from tests.support import openapi

USER: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello   there\nworld"},
]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}, "n": {"type": "integer"}}},
        },
    },
]


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0) as c:
        yield c


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def raw_post(fake: FakeOpenAI, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or fake.api_key}"}
    return httpx.post(fake.base_url + path, json=body, headers=headers, timeout=10)


def test_chat_non_stream(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == "gpt-4o-mini"
    assert r.system_fingerprint
    choice = r.choices[0]
    assert choice.message.content == "Echo: hello there world"
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)

    raw = raw_post(fake_openai, "/chat/completions", {"model": "gpt-4o-mini", "messages": USER})
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.headers["x-request-id"].startswith("req_")
    openapi.validate("CreateChatCompletionResponse", raw.json())
    recorded = fake_openai.last_request
    assert recorded.json["messages"] == USER
    assert recorded.headers["authorization"] == f"Bearer {fake_openai.api_key}"


def test_chat_stream_without_usage(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert pieces == ["Echo:", " hello", " there", " world"]
    assert last.choices[0].finish_reason == "stop"
    assert last.choices[0].delta.content is None
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1

    with httpx.stream(
        "POST", fake_openai.base_url + "/chat/completions", timeout=10,
        json={"model": "gpt-4o-mini", "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {fake_openai.api_key}"},
    ) as resp:  # fmt: skip
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read()
    assert raw.endswith(b"\n\ndata: [DONE]\n\n") and raw.count(b"[DONE]") == 1
    parsed = openapi.validate_sse_stream(raw)
    assert all("usage" not in c for c in parsed)  # the key is absent unless include_usage is asked for


async def test_chat_stream_include_usage_async(fake_openai: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0) as c:
        plain = await c.chat.completions.create(model="gpt-4o", messages=USER)
        stream = await c.chat.completions.create(
            model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage == plain.usage
    assert all(ch.usage is None for ch in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1]) == plain.choices[0].message.content

    body = {"model": "gpt-4o", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    parsed = openapi.validate_sse_stream(raw_post(fake_openai, "/chat/completions", body).content)
    assert all("usage" in ch for ch in parsed)
    assert [ch["usage"] is None for ch in parsed] == [True] * (len(parsed) - 1) + [False]


def test_max_tokens_and_stop(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Echo: hello", "length")
    assert r.usage is not None and r.usage.completion_tokens == 2
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=3)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Echo: hello there", "length")
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stop=["there"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Echo: hello ", "stop")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=2, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hello"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_json_response_format(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content or "") == {"echo": "hello there world"}


def test_tool_call_non_stream(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "hello there world", "unit": "c"}
    raw = raw_post(fake_openai, "/chat/completions", {"model": "gpt-4o-mini", "messages": USER, "tools": TOOLS})
    openapi.validate("CreateChatCompletionResponse", raw.json())


def test_tool_choice_named_and_none(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    calls = function_calls(r.choices[0].message)
    assert [c.function.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments) == {"tz": "hello there world", "n": 3}
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "Echo: hello there world"


def test_parallel_tool_calls_streamed_and_reassembled(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather and time in parallel"}]
    with client.chat.completions.stream(model="gpt-4o-mini", messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "weather and time in parallel", "unit": "c"}
    assert json.loads(calls[1].function.arguments) == {"tz": "weather and time in parallel", "n": 5}
    assert len({c.id for c in calls}) == 2

    raw = raw_post(fake_openai, "/chat/completions",
                   {"model": "gpt-4o-mini", "messages": messages, "tools": TOOLS, "stream": True})  # fmt: skip
    chunks = openapi.validate_sse_stream(raw.content)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] is None
    parts = [tc for d in deltas for tc in d.get("tool_calls", [])]
    for index in (0, 1):
        mine = [p for p in parts if p["index"] == index]
        assert len(mine) > 2  # header + several argument fragments
        assert {"id", "type"} <= mine[0].keys() and mine[0]["function"]["arguments"] == ""
        assert all("id" not in p and "type" not in p and "name" not in p["function"] for p in mine[1:])
    assert [p["index"] for p in parts] == sorted(p["index"] for p in parts)  # call 0 complete before call 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and deltas[-1] == {}

    one = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS,
                                         parallel_tool_calls=False)  # fmt: skip
    assert len(one.choices[0].message.tool_calls or []) == 1


def test_tool_result_gets_text_again(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=TOOLS)
    call = (first.choices[0].message.tool_calls or [])[0]
    messages: list[ChatCompletionMessageParam] = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": call.id, "content": "11 degrees"},
    ]  # fmt: skip
    r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "Echo: 11 degrees"


def test_embeddings_base64_default_equals_float(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    inputs = ["the quick brown fox", "jumps"]
    default = client.embeddings.create(model="text-embedding-3-small", input=inputs)
    assert fake_openai.last_request.json["encoding_format"] == "base64"  # what the SDK asks for by default
    floats = client.embeddings.create(model="text-embedding-3-small", input=inputs, encoding_format="float")
    assert fake_openai.last_request.json["encoding_format"] == "float"
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert floats.data[0].embedding == text.embedding_vector("the quick brown fox", 1536)
    assert [d.index for d in floats.data] == [0, 1]
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (5, 5)
    small = client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=8, encoding_format="float")
    assert len(small.data[0].embedding) == 8

    body = {"model": "text-embedding-3-small", "input": inputs}
    openapi.validate("CreateEmbeddingResponse", raw_post(fake_openai, "/embeddings", body).json())
    b64 = raw_post(fake_openai, "/embeddings", {**body, "encoding_format": "base64"}).json()
    assert isinstance(b64["data"][0]["embedding"], str)
    openapi.validate("CreateEmbeddingResponse", b64, base64_embeddings=True)
    with pytest.raises(openapi.SchemaError):
        openapi.validate("CreateEmbeddingResponse", b64)


def test_models(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert client.models.retrieve("gpt-4o").owned_by == "system"
    raw = httpx.get(fake_openai.base_url + "/models", headers={"Authorization": f"Bearer {fake_openai.api_key}"})
    openapi.validate("ListModelsResponse", raw.json())
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_auth_errors(fake_openai: FakeOpenAI) -> None:
    bad = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-wrong-key-123", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert "Incorrect API key provided" in info.value.message
    raw = raw_post(fake_openai, "/chat/completions", {"model": "gpt-4o-mini", "messages": USER}, key="nope")
    assert raw.status_code == 401
    openapi.validate("ErrorResponse", raw.json())
    missing = httpx.get(fake_openai.base_url + "/models")  # no Authorization header at all
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] is None
    assert "You didn't provide an API key" in missing.json()["error"]["message"]


def test_request_errors(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-9", messages=USER)
    assert nf.value.code == "model_not_found" and "gpt-9" in nf.value.message
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream_options={"include_usage": True})
    assert "'stream_options' parameter is only allowed when 'stream' is enabled" in br.value.message
    raw = httpx.post(fake_openai.base_url + "/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {fake_openai.api_key}"})  # fmt: skip
    assert raw.status_code == 400
    openapi.validate("ErrorResponse", raw.json())
    unknown = raw_post(fake_openai, "/nope", {})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "Invalid URL (POST /v1/nope)", "type": "invalid_request_error", "param": None, "code": None,
    }  # fmt: skip


def test_any_key_and_any_model_when_unconfigured() -> None:
    with FakeOpenAI(api_key=None, models=None) as fake, openai.OpenAI(
        base_url=fake.base_url, api_key="whatever", max_retries=0
    ) as c:  # fmt: skip
        r = c.chat.completions.create(model="my-custom-model", messages=USER)
        assert r.model == "my-custom-model"


def test_obfuscation_and_dated_model_names() -> None:
    fake = FakeOpenAI(obfuscation=True, response_models={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"})
    with fake, openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as c:
        chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
        assert all(ch.obfuscation and ch.model == "gpt-4o-mini-2024-07-18" for ch in chunks)
        body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
        parsed = openapi.validate_sse_stream(raw_post(fake, "/chat/completions", body).content)
        assert all(isinstance(ch["obfuscation"], str) for ch in parsed)
        off = {**body, "stream_options": {"include_obfuscation": False}}
        assert all(
            "obfuscation" not in ch
            for ch in openapi.validate_sse_stream(raw_post(fake, "/chat/completions", off).content)
        )
        plain = c.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert plain.model == "gpt-4o-mini-2024-07-18"

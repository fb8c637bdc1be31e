"""Chat completions end to end: the official openai SDK → the real gateway → faithful fake OpenAI / Ollama servers.

Every test runs against both provider types: an unchanged OpenAI client must not be able to tell them apart.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.api.conftest import TenantKey
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.bedrock_fake import FakeBedrock
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.openapi import validate, validate_sse_stream

MODELS = {"gpt": "oai", "llama": "local", "claude": "claude", "bedrock": "aws"}
MSG: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello gateway world"},
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]

pytestmark = pytest.mark.parametrize("model", sorted(MODELS))


def usage_rows(gw: RunningGateway, tenant: TenantKey) -> dict[str, Any]:
    gw.flush_usage()
    r = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_non_streaming(
    model: str, client: openai.OpenAI, http: httpx.Client, gw: RunningGateway, tenant: TenantKey
) -> None:
    resp = client.chat.completions.with_raw_response.create(model=model, messages=MSG)
    assert resp.headers["x-aigw-provider"] == MODELS[model]
    assert resp.headers["x-aigw-cache"] == "bypass"
    assert len(resp.headers["x-request-id"]) >= 16
    completion = resp.parse()
    assert completion.choices[0].message.content == "Echo: hello gateway world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 4
    validate("CreateChatCompletionResponse", json.loads(resp.http_response.content))

    usage = usage_rows(gw, tenant)
    assert usage["requests"] == 1
    assert usage["prompt_tokens"] == completion.usage.prompt_tokens
    assert usage["completion_tokens"] == completion.usage.completion_tokens
    assert usage["by_model"][0]["model"] == model


async def test_async_client(model: str, aclient: openai.AsyncOpenAI) -> None:
    async with aclient:
        completion = await aclient.chat.completions.create(model=model, messages=MSG)
    assert completion.choices[0].message.content == "Echo: hello gateway world"


def test_streaming_without_usage_is_still_metered(
    model: str,
    client: openai.OpenAI,
    http: httpx.Client,
    gw: RunningGateway,
    tenant: TenantKey,
    oai: FakeOpenAI,
) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=MSG, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello gateway world"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no usage chunk when the client did not ask"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    if model == "gpt":
        assert oai.last_request.json["stream_options"]["include_usage"] is True  # asked upstream anyway

    raw = http.post("/v1/chat/completions", json={"model": model, "messages": MSG, "stream": True})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-aigw-provider"] == MODELS[model]
    validate_sse_stream(raw.content)

    usage = usage_rows(gw, tenant)
    assert usage["requests"] == 2 and usage["completion_tokens"] == 8 and usage["prompt_tokens"] > 0


def test_streaming_with_usage_chunk(model: str, client: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": model, "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    chunks = validate_sse_stream(http.post("/v1/chat/completions", json=body).content)
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1, "one id for the whole stream"

    sdk_chunks = list(
        client.chat.completions.create(model=model, messages=MSG, stream=True, stream_options={"include_usage": True})
    )
    assert sdk_chunks[-1].usage is not None and sdk_chunks[-1].usage.completion_tokens == 4


def test_tool_call_round_trip(model: str, client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Paris"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    assert call.id

    follow = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny and warm"},
        ],
        tools=TOOLS,
    )
    assert follow.choices[0].message.content == "Echo: sunny and warm"
    assert follow.choices[0].finish_reason == "stop"


def test_parallel_tool_calls_streamed(model: str, client: openai.OpenAI, http: httpx.Client) -> None:
    messages: list[Any] = [{"role": "user", "content": "use parallel tools for Paris"}]
    with client.chat.completions.stream(model=model, messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
    assert len({c.id for c in calls}) == 2
    assert final.choices[0].finish_reason == "tool_calls"

    raw = http.post("/v1/chat/completions", json={"model": model, "messages": messages, "tools": TOOLS, "stream": True})
    chunks = validate_sse_stream(raw.content)
    indexes = {tc["index"] for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])}
    assert indexes == {0, 1}


def test_stop_and_length(model: str, client: openai.OpenAI) -> None:
    cut = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one two three four five"}], max_completion_tokens=2
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "Echo: one"
    stopped = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one two three four five"}], stop=["three"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content is not None and "three" not in stopped.choices[0].message.content


def test_unknown_fields_pass_through_to_openai(
    model: str, http: httpx.Client, oai: FakeOpenAI, olla: FakeOllama, ant: FakeAnthropic, brk: FakeBedrock
) -> None:
    body = {"model": model, "messages": MSG, "metadata": {"team": "a"}, "service_tier": "auto", "x_future": [1, 2]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if model == "gpt":
        sent = oai.last_request.json
        assert sent["metadata"] == {"team": "a"} and sent["x_future"] == [1, 2] and sent["service_tier"] == "auto"
        assert sent["model"] == "gpt-4o-mini"
        return
    # Translated providers get only what their API defines: an OpenAI-only field would be a 400 there.
    fakes: dict[str, FakeOllama | FakeAnthropic | FakeBedrock] = {"llama": olla, "claude": ant, "bedrock": brk}
    fake = fakes[model]
    sent = fake.last_request.json
    assert "x_future" not in sent and "service_tier" not in sent

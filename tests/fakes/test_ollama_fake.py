"""FakeOllama speaks Ollama's native API: driven by the official ``ollama`` SDK (sync and async) and raw HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import ollama
import pytest

from tests.fakes import text
from tests.fakes.ollama_fake import FakeOllama

MSGS: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "why is the sky blue"},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a given city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    },
]
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture
def client(fake_ollama: FakeOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=fake_ollama.url) as c:
        yield c


def test_chat_non_stream(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    r = client.chat(model="llama3.2", messages=MSGS, options={"temperature": 0, "top_p": 0.9, "seed": 42})
    assert r.model == "llama3.2"
    assert (r.message.role, r.message.content) == ("assistant", "Echo: why is the sky blue")
    assert r.done is True and r.done_reason == "stop"
    assert (r.prompt_eval_count, r.eval_count) == (7, 6)
    assert all(isinstance(getattr(r, m), int) and getattr(r, m) > 0 for m in METRICS)
    assert r.total_duration is not None and r.load_duration is not None and r.eval_duration is not None
    assert r.total_duration > r.load_duration + r.eval_duration
    assert r.created_at is not None and r.created_at.endswith("Z")
    assert datetime.fromisoformat(r.created_at).tzinfo is not None
    sent = fake_ollama.last_request.json
    assert sent["stream"] is False and sent["options"] == {"temperature": 0, "top_p": 0.9, "seed": 42}

    raw = httpx.post(fake_ollama.url + "/api/chat", json={"model": "llama3.2", "messages": MSGS, "stream": False})
    assert raw.headers["content-type"] == "application/json; charset=utf-8"
    assert list(raw.json()) == ["model", "created_at", "message", "done", "done_reason", *METRICS]


def test_chat_streams_ndjson_by_default(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    with httpx.stream("POST", fake_ollama.url + "/api/chat", json={"model": "llama3:8b", "messages": MSGS}) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in resp.iter_lines()]
    assert [line["message"]["content"] for line in lines] == ["Echo:", " why", " is", " the", " sky", " blue", ""]
    assert all(line["done"] is False and set(line) == {"model", "created_at", "message", "done"} for line in lines[:-1])
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert {k: lines[-1][k] for k in ("prompt_eval_count", "eval_count")} == {"prompt_eval_count": 7, "eval_count": 6}

    parts = list(client.chat(model="llama3:8b", messages=MSGS, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "Echo: why is the sky blue"
    assert [p.done for p in parts] == [False] * 6 + [True]
    plain = client.chat(model="llama3:8b", messages=MSGS)
    assert (parts[-1].eval_count, parts[-1].prompt_eval_count) == (plain.eval_count, plain.prompt_eval_count)


async def test_async_client_chat(fake_ollama: FakeOllama) -> None:
    async with ollama.AsyncClient(host=fake_ollama.url) as client:
        plain = await client.chat(model="llama3.2:latest", messages=MSGS)
        stream = await client.chat(model="llama3.2:latest", messages=MSGS, stream=True)
        parts = [p async for p in stream]
    assert plain.message.content == "".join(p.message.content or "" for p in parts)
    assert parts[-1].done_reason == "stop"


def test_tool_calls(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    r = client.chat(model="llama3.2", messages=MSGS, tools=TOOLS)
    assert r.done_reason == "stop"  # Ollama has no "tool_calls" done reason
    calls = r.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "why is the sky blue"})
    ]
    raw = httpx.post(fake_ollama.url + "/api/chat",
                     json={"model": "llama3.2", "messages": MSGS, "tools": TOOLS, "stream": False}).json()  # fmt: skip
    call = raw["message"]["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], dict)  # an object, not a JSON string as in OpenAI
    assert call["id"].startswith("call_") and call["function"]["index"] == 0

    parallel = [{"role": "user", "content": "both in parallel"}]
    parts = list(client.chat(model="llama3.2", messages=parallel, tools=TOOLS, stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert [[c.function.name for c in p.message.tool_calls or []] for p in with_calls] == [
        ["get_weather"],
        ["get_time"],
    ]
    assert all(p.done is False for p in with_calls) and parts[-1].done_reason == "stop"
    assert dict((with_calls[1].message.tool_calls or [])[0].function.arguments) == {"tz": "both in parallel"}

    after: list[dict[str, Any]] = [
        *parallel,
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {}}}]},
        {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather"},
    ]
    r = client.chat(model="llama3.2", messages=after, tools=TOOLS)
    assert r.message.tool_calls is None and r.message.content == "Echo: 11 degrees celsius"


def test_options_num_predict_and_stop(client: ollama.Client) -> None:
    r = client.chat(model="llama3.2", messages=MSGS, options={"num_predict": 3})
    assert (r.message.content, r.done_reason, r.eval_count) == ("Echo: why is", "length", 3)
    r = client.chat(model="llama3.2", messages=MSGS, options={"stop": ["sky"]})
    assert (r.message.content, r.done_reason) == ("Echo: why is the ", "stop")
    parts = list(client.chat(model="llama3.2", messages=MSGS, options={"num_predict": 2}, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "Echo: why" and parts[-1].done_reason == "length"


def test_format_json_and_schema(client: ollama.Client) -> None:
    r = client.chat(model="llama3.2", messages=MSGS, format="json")
    assert json.loads(r.message.content or "") == {"echo": "why is the sky blue"}
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}, "name": {"type": "string"}},
        "required": ["age", "available"],
    }
    r = client.chat(model="llama3.2", messages=MSGS, format=schema)
    value = json.loads(r.message.content or "")
    jsonschema.validate(value, schema)
    assert value == {"age": 5, "available": True}


def test_thinking(client: ollama.Client) -> None:
    r = client.chat(model="qwen3", messages=MSGS)  # thinking models think unless told not to
    assert r.message.thinking == "Thinking about: why is the sky blue"
    assert r.message.content == "Echo: why is the sky blue"
    parts = list(client.chat(model="qwen3", messages=MSGS, think=True, stream=True))
    thinking = [p for p in parts if p.message.thinking]
    assert thinking == parts[: len(thinking)] and all(p.message.content == "" for p in thinking)
    assert client.chat(model="qwen3", messages=MSGS, think=False).message.thinking is None
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.2", messages=MSGS, think=True)
    assert (err.value.status_code, err.value.error) == (400, '"llama3.2" does not support thinking')


def test_embed(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    one = client.embed(model="nomic-embed-text", input="why is the sky blue")
    assert one.embeddings == [text.embedding_vector("why is the sky blue", 768)]
    assert one.prompt_eval_count == 5
    many = client.embed(model="nomic-embed-text", input=["a b", "c"], dimensions=16)
    assert [len(e) for e in many.embeddings] == [16, 16] and many.prompt_eval_count == 3
    assert fake_ollama.last_request.json["input"] == ["a b", "c"]
    raw = httpx.post(fake_ollama.url + "/api/embed", json={"model": "nomic-embed-text", "input": []}).json()
    assert raw == {"model": "nomic-embed-text", "embeddings": []}
    bad = httpx.post(fake_ollama.url + "/api/embed", json={"model": "nomic-embed-text", "input": 3})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})


def test_catalogue(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    models = client.list().models
    assert [m.model for m in models] == ["llama3.2:latest", "llama3:8b", "nomic-embed-text:latest", "qwen3:latest"]
    assert models[1].details is not None and models[1].details.parameter_size == "8.0B"
    assert httpx.get(fake_ollama.url + "/api/version").json() == {"version": "0.12.6"}
    assert httpx.get(fake_ollama.url + "/").text == "Ollama is running"
    shown = client.show("nomic-embed-text")
    assert shown.capabilities == ["embedding"]
    assert client.show("llama3.2").capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("mistral")
    assert (err.value.status_code, err.value.error) == (404, "model 'mistral' not found")
    assert httpx.get(fake_ollama.url + "/api/nope").text == "404 page not found"


def test_request_errors(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.1", messages=MSGS)
    # server/routes.go ChatHandler → 404 {"error": "model 'llama3.1' not found"}
    assert (err.value.status_code, err.value.error) == (404, "model 'llama3.1' not found")
    with pytest.raises(ollama.ResponseError) as err:
        list(client.chat(model="llama3.1", messages=MSGS, stream=True))
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="all-minilm", input="x")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nomic-embed-text", messages=MSGS)
    assert (err.value.status_code, err.value.error) == (400, '"nomic-embed-text" does not support chat')
    missing = httpx.post(fake_ollama.url + "/api/chat", json={"messages": MSGS})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})
    assert httpx.post(fake_ollama.url + "/api/chat").json() == {"error": "missing request body"}
    load = httpx.post(fake_ollama.url + "/api/chat", json={"model": "llama3.2", "messages": []}).json()
    assert (load["done"], load["done_reason"], load["message"]) == (True, "load", {"role": "assistant", "content": ""})


def test_images(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    png = b"\x89PNG\r\n\x1a\nfake image bytes"
    r = client.chat(model="llama3.2", messages=[{"role": "user", "content": "what is this", "images": [png]}])
    assert r.message.content == "Echo: what is this"
    sent = fake_ollama.last_request.json["messages"][0]["images"]
    assert sent == [base64.b64encode(png).decode()]  # the SDK sends raw base64, no data: URL
    url = {"role": "user", "content": "x", "images": ["https://example.com/cat.png"]}
    bad = httpx.post(fake_ollama.url + "/api/chat", json={"model": "llama3.2", "messages": [url]})
    # images are Go []byte: JSON binding base64-decodes them, so a URL is a 400 from the decoder
    assert (bad.status_code, bad.json()) == (400, {"error": "illegal base64 data at input byte 5"})


def test_api_key_when_configured() -> None:
    with FakeOllama(api_key="secret") as fake:
        assert httpx.get(fake.url + "/api/tags").status_code == 401
        with ollama.Client(host=fake.url, headers={"Authorization": "Bearer secret"}) as ok:
            assert ok.chat(model="llama3.2", messages=MSGS).done
        with ollama.Client(host=fake.url) as anonymous, pytest.raises(ollama.ResponseError) as err:
            anonymous.chat(model="llama3.2", messages=MSGS)
        assert (err.value.status_code, err.value.error) == (401, "unauthorized")

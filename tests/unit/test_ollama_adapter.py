"""OllamaAdapter: OpenAI requests → Ollama's native /api/chat and /api/embed, and Ollama's answers back, from
fixtures in tests/fixtures/ollama (no HTTP). Every body and chunk produced is checked against the official OpenAI
schema subset in tests/data."""

from __future__ import annotations

import array
import base64
import struct
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import msgspec
import orjson
import pytest
import yaml

from aigw.errors import InvalidRequest, UpstreamError
from aigw.providers.base import (
    ChatAdapter,
    ChatInput,
    EmbeddingsAdapter,
    EmbeddingsInput,
    Framing,
    StreamDecoder,
    StreamIdentity,
    UpstreamEvent,
)
from aigw.providers.framing import NDJSONParser
from aigw.providers.ollama import OllamaAdapter
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.embeddings import EmbeddingRequest
from aigw.schema.usage import Usage
from tests.support import openapi

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ollama"
SPEC = Path(__file__).parents[1] / "data" / "openai-openapi-subset.yaml"
IDENT = StreamIdentity(id="chatcmpl-abc123", created=1_751_900_000)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


# ---- OpenAI schema check (local: the spec still uses OpenAPI 3.0 `nullable`, rewritten to null unions) -----


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


_SCHEMAS = {"components": {"schemas": _nullable(yaml.safe_load(SPEC.read_text())["components"]["schemas"])}}


def validate(name: str, instance: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", **_SCHEMAS}
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_schema_check_can_fail() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate("CreateChatCompletionStreamResponse", {"id": "x", "object": "chat.completion.chunk"})
    with pytest.raises(jsonschema.ValidationError):
        validate("ChatCompletionMessageToolCallChunk", {"id": "call_1"})  # `index` is required


# ---- helpers ---------------------------------------------------------------------------------------------


def chat(**fields: Any) -> ChatInput:
    raw = {"model": "local-llama", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


def encode(adapter: OllamaAdapter | None = None, *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    up = (adapter or OllamaAdapter()).encode_chat(chat(**fields), model="llama3.2", stream=stream)
    assert up.path == "/api/chat"
    assert up.method == "POST"
    assert up.headers == {"content-type": "application/json"}
    body: dict[str, Any] = orjson.loads(up.body)
    return body


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def run_stream(
    name: str | bytes, *, include_usage: bool = False, single_tool_call: bool = False
) -> tuple[StreamDecoder, list[dict[str, Any]]]:
    """Feed a fixture (or a handmade NDJSON transcript) through the real NDJSON framing, split at awkward places,
    and decode every chunk."""
    dec = OllamaAdapter().stream_decoder(
        model="llama3.2", include_usage=include_usage, ident=IDENT, single_tool_call=single_tool_call
    )
    data = fixture(name) if isinstance(name, str) else name
    parser, out = NDJSONParser(), list[bytes]()
    for i in range(0, len(data), 7):
        for event in parser.feed(data[i : i + 7]):
            out.extend(dec.feed(event))
    for event in parser.close():
        out.extend(dec.feed(event))
    out.extend(dec.finish())
    chunks = [orjson.loads(c) for c in out]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        openapi.validate("CreateChatCompletionStreamResponse", c)
    return dec, chunks


def line(obj: dict[str, Any]) -> UpstreamEvent:
    return UpstreamEvent(None, orjson.dumps(obj))


def test_satisfies_the_protocols() -> None:
    adapter = OllamaAdapter()
    chat_adapter: ChatAdapter = adapter
    emb_adapter: EmbeddingsAdapter = adapter
    assert chat_adapter.framing is Framing.NDJSON
    assert emb_adapter is adapter


# ---- request encoding ------------------------------------------------------------------------------------


def test_minimal_request_uses_the_upstream_model_and_says_stream_false() -> None:
    assert encode() == {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.mark.parametrize("stream", [True, False])
def test_stream_flag_is_always_explicit(stream: bool) -> None:
    # Ollama streams unless told otherwise, so `false` must be sent, not left out.
    assert encode(stream=stream)["stream"] is stream


def test_system_developer_and_multi_turn() -> None:
    body = encode(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Answer"}, {"type": "text", "text": "in English."}],
            },
            {"role": "user", "content": "why is the sky blue?"},
            {"role": "assistant", "content": "due to rayleigh scattering."},
            {"role": "user", "content": [{"type": "text", "text": "how is that different than mie scattering?"}]},
        ]
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer\nin English."},
        {"role": "user", "content": "why is the sky blue?"},
        {"role": "assistant", "content": "due to rayleigh scattering."},
        {"role": "user", "content": "how is that different than mie scattering?"},
    ]


def test_data_uri_images_become_bare_base64() -> None:
    content = [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG[:8]}"}},
        {"type": "text", "text": "be specific"},
    ]
    body = encode(messages=[{"role": "user", "content": content}])
    assert body["messages"] == [
        {"role": "user", "content": "what is in this image?\nbe specific", "images": [PNG, PNG[:8]]}
    ]


@pytest.mark.parametrize(
    "url", ["https://example.com/cat.png", "http://example.com/cat.png", "data:image/png,rawbytes", "cat.png"]
)
def test_non_inline_images_are_rejected(url: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert ei.value.param == "messages"
    assert "data:image/...;base64" in ei.value.message
    if url.startswith("http"):
        assert "URL" in ei.value.message


def test_audio_input_is_rejected() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "user", "content": [part]}])
    assert ei.value.param == "messages"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


def test_tools_tool_calls_and_tool_results_round_trip() -> None:
    body = encode(
        tools=[WEATHER_TOOL, TIME_TOOL],
        messages=[
            {"role": "user", "content": "weather and time in Toronto?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_w",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Toronto"}'},
                    },
                    {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_t", "content": "14:05"},
            {"role": "tool", "tool_call_id": "call_w", "content": [{"type": "text", "text": "11 degrees celsius"}]},
        ],
    )
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather in a given city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        },
        {"type": "function", "function": {"name": "get_time"}},
    ]
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_w", "function": {"name": "get_weather", "arguments": {"city": "Toronto"}}},
                {"id": "call_t", "function": {"name": "get_time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "14:05", "tool_call_id": "call_t", "tool_name": "get_time"},
        {"role": "tool", "content": "11 degrees celsius", "tool_call_id": "call_w", "tool_name": "get_weather"},
    ]


def test_tool_result_for_an_unknown_call_has_no_tool_name() -> None:
    body = encode(
        messages=[{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]
    )
    assert body["messages"][1] == {"role": "tool", "content": "x", "tool_call_id": "nope"}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"city"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}])
    assert ei.value.param == "messages"


def test_tool_choice_none_omits_tools() -> None:
    assert "tools" not in encode(tools=[WEATHER_TOOL], tool_choice="none")


@pytest.mark.parametrize("choice", ["auto", "required", None])
def test_other_tool_choices_still_offer_the_tools(choice: Any) -> None:
    # "required" cannot be enforced: Ollama has no tool_choice, so the model decides as with "auto".
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL, TIME_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    body = encode(**fields)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assert "tool_choice" not in body


@pytest.mark.parametrize(("name", "index"), [("get_time", 1), ("get_weather", 0)])
def test_named_tool_choice_offers_only_that_tool(name: str, index: int) -> None:
    # Ollama cannot be forced to call a tool, but a model offered only one tool can call no other.
    body = encode(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"type": "function", "function": {"name": name}})
    assert body["tools"] == [encode(tools=[WEATHER_TOOL, TIME_TOOL])["tools"][index]]
    assert "tool_choice" not in body


def test_named_tool_choice_must_name_a_tool() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"type": "function", "function": {"name": "get_tide"}})
    assert ei.value.param == "tool_choice"
    assert ei.value.status == 400
    assert "get_tide" in ei.value.message


def test_named_tool_choice_without_tools_offers_none() -> None:
    # As on the other providers: a tool_choice without tools means nothing.
    assert "tools" not in encode(tool_choice={"type": "function", "function": {"name": "get_time"}})


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}, SCHEMA),
        ({"type": "json_schema", "json_schema": {"name": "anything"}}, "json"),
        ({"type": "text"}, None),
    ],
)
def test_response_format(response_format: dict[str, Any], expected: Any) -> None:
    assert encode(response_format=response_format).get("format") == expected


def test_unknown_response_format_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(response_format={"type": "yaml"})
    assert ei.value.param == "response_format"


def test_sampling_options() -> None:
    body = encode(temperature=0.2, top_p=0.9, seed=42, stop="\n", presence_penalty=1.5, frequency_penalty=-0.5)
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n"],
        "presence_penalty": 1.5,
        "frequency_penalty": -0.5,
    }
    assert encode(stop=["user:", "\n\n"])["options"] == {"stop": ["user:", "\n\n"]}
    assert encode(temperature=0)["options"] == {"temperature": 0}  # 0 is a value, not "unset"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert encode(max_tokens=100, max_completion_tokens=50)["options"] == {"num_predict": 50}
    assert encode(max_tokens=100)["options"] == {"num_predict": 100}


def test_n_above_one_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(n=2)
    assert ei.value.param == "n"
    assert encode(n=1)["messages"]


def test_openai_only_fields_are_ignored() -> None:
    body = encode(user="u-1", logprobs=True, top_logprobs=2, parallel_tool_calls=False, service_tier="flex")
    assert set(body) == {"model", "messages", "stream"}


@pytest.mark.parametrize(("configured", "sent"), [("10m", "10m"), ("0", 0), ("-1", -1), ("3600", 3600), ("1.5", 1.5)])
def test_keep_alive(configured: str, sent: Any) -> None:
    # A bare number is sent as a JSON number: Ollama's Go ParseDuration rejects "-1" and "3600" as strings.
    adapter = OllamaAdapter(keep_alive=configured)
    assert encode(adapter)["keep_alive"] == sent
    emb = EmbeddingsInput(EmbeddingRequest(model="m", input="x"), {"model": "m", "input": "x"})
    assert orjson.loads(adapter.encode_embeddings(emb, model="all-minilm").body)["keep_alive"] == sent
    assert "keep_alive" not in encode(OllamaAdapter())


# ---- response decoding -----------------------------------------------------------------------------------


def decode(name: str | bytes, *, single_tool_call: bool = False) -> tuple[Any, dict[str, Any]]:
    raw = fixture(name) if isinstance(name, str) else name
    completion = OllamaAdapter().decode_chat(raw, model="local-llama", ident=IDENT, single_tool_call=single_tool_call)
    body: dict[str, Any] = orjson.loads(completion.body)
    validate("CreateChatCompletionResponse", body)
    openapi.validate("CreateChatCompletionResponse", body)
    return completion, body


def test_decode_text() -> None:
    completion, body = decode("chat.json")
    assert body == {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_751_900_000,
        "model": "llama3.2",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The sky is blue because of Rayleigh scattering.",
                    "refusal": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 26,
            "completion_tokens": 11,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert completion.usage == Usage(prompt_tokens=26, completion_tokens=11)
    assert completion.response_model == "llama3.2"
    assert completion.finish_reason == "stop"


def test_decode_tool_calls() -> None:
    completion, body = decode("chat_tools.json")
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["id"], c["type"], c["function"]["name"]) for c in message["tool_calls"]] == [
        ("call_abc123_0", "function", "get_current_weather"),
        ("call_abc123_1", "function", "get_current_weather"),
    ]
    args = [c["function"]["arguments"] for c in message["tool_calls"]]
    assert all(isinstance(a, str) for a in args)
    assert [orjson.loads(a) for a in args] == [
        {"format": "celsius", "location": "Paris, FR"},
        {"format": "celsius", "location": "Tokyo, JP"},
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"  # although Ollama said done_reason "stop"
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(prompt_tokens=122, completion_tokens=33)


@pytest.mark.parametrize(("single_tool_call", "cities"), [(True, ["Paris, FR"]), (False, ["Paris, FR", "Tokyo, JP"])])
def test_decode_parallel_tool_calls_false_keeps_the_first_call(single_tool_call: bool, cities: list[str]) -> None:
    # parallel_tool_calls: false cannot be sent to Ollama: the answer keeps only its first call instead.
    completion, body = decode("chat_tools.json", single_tool_call=single_tool_call)
    message = body["choices"][0]["message"]
    assert [orjson.loads(c["function"]["arguments"])["location"] for c in message["tool_calls"]] == cities
    assert message["tool_calls"][0]["id"] == "call_abc123_0"
    assert message["content"] is None
    assert body["choices"][0]["finish_reason"] == completion.finish_reason == "tool_calls"
    # The dropped call's tokens were still generated (and billed) upstream.
    assert completion.usage == Usage(prompt_tokens=122, completion_tokens=33)
    assert body["usage"]["completion_tokens"] == 33


def test_decode_single_tool_call_keeps_content_and_leaves_a_lone_call_alone() -> None:
    raw = orjson.loads(fixture("chat_tools.json"))
    raw["message"]["content"] = "Checking both."
    _, body = decode(orjson.dumps(raw), single_tool_call=True)
    assert body["choices"][0]["message"]["content"] == "Checking both."
    assert len(body["choices"][0]["message"]["tool_calls"]) == 1
    _, one = decode("chat_tools_ids.json", single_tool_call=True)
    assert [c["id"] for c in one["choices"][0]["message"]["tool_calls"]] == ["call_x7k2p9qa"]
    _, text = decode("chat.json", single_tool_call=True)
    assert "tool_calls" not in text["choices"][0]["message"]
    assert text["choices"][0]["finish_reason"] == "stop"


def test_decode_keeps_upstream_tool_call_ids_and_drops_thinking() -> None:
    _, body = decode("chat_tools_ids.json")
    message = body["choices"][0]["message"]
    assert message["tool_calls"][0]["id"] == "call_x7k2p9qa"
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Tokyo"}
    assert message["content"] is None
    assert "thinking" not in orjson.dumps(body).decode()


def test_decode_length() -> None:
    completion, body = decode("chat_length.json")
    assert body["choices"][0]["finish_reason"] == "length"
    assert completion.finish_reason == "length"


def test_decode_without_prompt_eval_count_counts_zero_prompt_tokens() -> None:
    completion, body = decode("chat_cached.json")
    assert completion.usage == Usage(prompt_tokens=0, completion_tokens=8)
    assert body["usage"]["total_tokens"] == 8


def test_decode_reads_the_cached_prompt_count() -> None:
    raw = orjson.loads(fixture("chat.json")) | {"prompt_eval_cached_count": 20}
    completion = OllamaAdapter().decode_chat(orjson.dumps(raw), model="m", ident=IDENT)
    assert completion.usage == Usage(prompt_tokens=26, completion_tokens=11, cached_prompt_tokens=20)
    assert orjson.loads(completion.body)["usage"]["prompt_tokens_details"] == {"cached_tokens": 20}


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1]", b'{"error": "boom"}'])
def test_decode_rejects_what_is_not_a_chat_response(body: bytes) -> None:
    with pytest.raises(UpstreamError) as ei:
        OllamaAdapter().decode_chat(body, model="m", ident=IDENT)
    assert ei.value.upstream_status == 502


# ---- stream decoding -------------------------------------------------------------------------------------


def test_stream_text() -> None:
    dec, chunks = run_stream("stream_text.ndjson")
    # The thinking-only first line yields nothing, and the role rides on the first content chunk.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "That"}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "That's a fantastic question!"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-abc123", 1_751_900_000, "qwen3:8b", "chat.completion.chunk")
    }
    assert all("usage" not in c for c in chunks)  # the client did not ask for usage
    assert dec.usage == Usage(prompt_tokens=26, completion_tokens=282)  # recorded for metering anyway
    assert dec.response_model == "qwen3:8b"
    assert dec.finish_reason == "stop"


def test_stream_usage_chunk_when_include_usage() -> None:
    dec, chunks = run_stream("stream_text.ndjson", include_usage=True)
    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": 282,
        "total_tokens": 308,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert (last["id"], last["created"], last["model"]) == ("chatcmpl-abc123", 1_751_900_000, "qwen3:8b")
    assert all(c["usage"] is None for c in content)  # as OpenAI: null until the last chunk
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert dec.usage == Usage(prompt_tokens=26, completion_tokens=282)


def test_stream_tool_calls() -> None:
    dec, chunks = run_stream("stream_tools.ndjson")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(tc["index"], tc["id"], tc["type"], tc["function"]["name"]) for tc in calls] == [
        (0, "call_abc123_0", "function", "get_weather"),
        (1, "call_abc123_1", "function", "get_weather"),
        (2, "call_abc123_2", "function", "get_time"),
    ]
    assert [orjson.loads(tc["function"]["arguments"]) for tc in calls] == [
        {"city": "Tokyo"},
        {"city": "Toronto"},
        {"timezone": "America/Toronto", "format": "24h"},
    ]
    assert all("content" not in c["choices"][0]["delta"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=169, completion_tokens=15)


def tool_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_parallel_tool_calls_false_emits_only_the_first_call(include_usage: bool) -> None:
    # The fixture's calls arrive one on the first line, two on the second: only the first is emitted, and the
    # second line (nothing but dropped calls) emits no chunk at all.
    dec, chunks = run_stream("stream_tools.ndjson", include_usage=include_usage, single_tool_call=True)
    calls = tool_deltas(chunks)
    assert [(tc["index"], tc["id"], tc["function"]["name"]) for tc in calls] == [(0, "call_abc123_0", "get_weather")]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Tokyo"}
    assert len(chunks) == 2 + include_usage  # the call, the finish chunk (and the usage chunk)
    assert chunks[1]["choices"][0]["finish_reason"] == dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=169, completion_tokens=15)
    if include_usage:
        assert chunks[-1]["usage"]["completion_tokens"] == 15


@pytest.mark.parametrize(("single_tool_call", "names"), [(True, ["get_weather"]), (False, ["get_weather", "get_time"])])
def test_stream_two_calls_on_one_line(single_tool_call: bool, names: list[str]) -> None:
    calls = [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_time", "arguments": {"city": "Paris"}}},
    ]
    lines = [
        {
            "model": "llama3.2",
            "message": {"role": "assistant", "content": "Let me see.", "tool_calls": calls},
            "done": False,
        },
        {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 9},
    ]
    transcript = b"".join(orjson.dumps(ln) + b"\n" for ln in lines)
    dec, chunks = run_stream(transcript, single_tool_call=single_tool_call)
    calls_out = tool_deltas(chunks)
    assert [tc["function"]["name"] for tc in calls_out] == names
    assert [tc["index"] for tc in calls_out] == list(range(len(names)))
    assert chunks[0]["choices"][0]["delta"]["content"] == "Let me see."
    assert chunks[-1]["choices"][0]["finish_reason"] == dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=0, completion_tokens=9)


def test_stream_length() -> None:
    dec, chunks = run_stream("stream_length.ndjson")
    # The `done` line itself carries the last fragment: it is sent before the finish chunk.
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Once", " upon", " a", " time", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert dec.finish_reason == "length"


def test_stream_with_only_a_done_line_still_sends_the_role() -> None:
    dec = OllamaAdapter().stream_decoder(model="llama3.2", include_usage=False, ident=IDENT)
    done = {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 1}
    (chunk,) = [orjson.loads(c) for c in dec.feed(line(done))]
    validate("CreateChatCompletionStreamResponse", chunk)
    assert chunk["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant"},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert dec.finish() == ()


def test_stream_error_line_raises() -> None:
    dec = OllamaAdapter().stream_decoder(model="llama3.2", include_usage=True, ident=IDENT)
    lines = fixture("stream_error.ndjson").splitlines()
    emitted = [c for ln in lines[:2] for c in dec.feed(UpstreamEvent(None, ln))]
    assert len(emitted) == 2
    with pytest.raises(UpstreamError) as ei:
        dec.feed(UpstreamEvent(None, lines[2]))
    assert ei.value.upstream_status == 502
    assert "an error was encountered while running the model" in ei.value.message
    assert ei.value.falls_back


def test_error_as_the_first_line_emits_nothing_before_raising() -> None:
    # Nothing may reach the client before the error, or the gateway could not fall back to another target.
    dec = OllamaAdapter().stream_decoder(model="llama3.2", include_usage=False, ident=IDENT)
    assert dec.feed(line({"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": False})) == []
    with pytest.raises(UpstreamError):
        dec.feed(line({"error": "model requires more system memory (8.0 GiB) than is available (4.0 GiB)"}))


@pytest.mark.parametrize("include_usage", [True, False])
def test_truncated_stream_raises_on_finish(include_usage: bool) -> None:
    with pytest.raises(UpstreamError) as ei:
        run_stream("stream_truncated.ndjson", include_usage=include_usage)
    assert ei.value.upstream_status == 502
    assert "done" in ei.value.message


@pytest.mark.parametrize("data", [b"not json", b"[]", b'"done"'])
def test_stream_line_that_is_not_an_object_raises(data: bytes) -> None:
    dec = OllamaAdapter().stream_decoder(model="llama3.2", include_usage=False, ident=IDENT)
    with pytest.raises(UpstreamError):
        dec.feed(UpstreamEvent(None, data))


# ---- embeddings ------------------------------------------------------------------------------------------


def embed_input(**fields: Any) -> EmbeddingsInput:
    raw = {"model": "text-embedding-3-small", "input": "Why is the sky blue?", **fields}
    # Built directly: msgspec cannot decode EmbeddingRequest's `input` union (several list types).
    return EmbeddingsInput(EmbeddingRequest(**raw), raw)


@pytest.mark.parametrize("inp", ["Why is the sky blue?", ["Why is the sky blue?", "Why is the grass green?"]])
def test_encode_embeddings(inp: str | list[str]) -> None:
    up = OllamaAdapter().encode_embeddings(
        embed_input(input=inp, dimensions=256, encoding_format="base64", user="u"), model="all-minilm"
    )
    assert up.path == "/api/embed"
    assert up.headers == {"content-type": "application/json"}
    assert orjson.loads(up.body) == {"model": "all-minilm", "input": inp, "dimensions": 256}


@pytest.mark.parametrize("inp", [[1, 2, 3], [[1, 2], [3]]])
def test_token_id_inputs_are_rejected(inp: Any) -> None:
    with pytest.raises(InvalidRequest) as ei:
        OllamaAdapter().encode_embeddings(embed_input(input=inp), model="all-minilm")
    assert ei.value.param == "input"


VECTORS = orjson.loads(fixture("embed.json"))["embeddings"]


def test_decode_embeddings_float() -> None:
    result = OllamaAdapter().decode_embeddings(fixture("embed.json"), model="m", encoding_format="float")
    body = orjson.loads(result.body)
    validate("CreateEmbeddingResponse", body)
    assert body["object"] == "list"
    assert body["model"] == "all-minilm"
    assert body["data"] == [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(VECTORS)]
    assert body["usage"] == {"prompt_tokens": 16, "total_tokens": 16}
    assert result.usage == Usage(prompt_tokens=16)
    assert result.response_model == "all-minilm"


def test_decode_embeddings_base64_is_little_endian_float32() -> None:
    result = OllamaAdapter().decode_embeddings(fixture("embed.json"), model="m", encoding_format="base64")
    body = orjson.loads(result.body)
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item, vector in zip(body["data"], VECTORS, strict=True):
        raw = base64.b64decode(item["embedding"], validate=True)
        assert len(raw) == 4 * len(vector)
        decoded = list(struct.unpack(f"<{len(vector)}f", raw))
        assert decoded == pytest.approx(vector, rel=1e-6)  # float32 rounding only
        as_sdk = array.array("f", raw)  # what openai-python does with a base64 embedding
        if sys.byteorder == "big":
            as_sdk.byteswap()
        assert as_sdk.tolist() == decoded
        item["embedding"] = decoded  # the spec describes float lists only; check the rest of the envelope
    validate("CreateEmbeddingResponse", body)
    assert body["usage"] == {"prompt_tokens": 16, "total_tokens": 16}


def test_decode_embeddings_rejects_a_body_without_embeddings() -> None:
    with pytest.raises(UpstreamError):
        OllamaAdapter().decode_embeddings(b'{"model": "m"}', model="m", encoding_format="float")


# ---- errors ----------------------------------------------------------------------------------------------


def test_decode_error_model_not_found() -> None:
    err = OllamaAdapter().decode_error(404, fixture("error_404.json"), {})
    assert err.message == 'model "llama3.2" not found, try pulling it first'
    assert err.upstream_status == 404
    assert err.retry_after is None
    assert err.falls_back  # another target may have the model


def test_decode_error_carries_retry_after() -> None:
    err = OllamaAdapter().decode_error(429, b'{"error": "too many requests"}', {"retry-after": "7"})
    assert (err.message, err.upstream_status, err.retry_after) == ("too many requests", 429, 7.0)


def test_decode_error_server_error() -> None:
    err = OllamaAdapter().decode_error(500, fixture("error_500.json"), {})
    assert err.message == "the model failed to generate a response"
    assert err.http_status == 502


def test_decode_error_bad_request_goes_back_to_the_client() -> None:
    err = OllamaAdapter().decode_error(400, b'{"error": "invalid format: expected \\"json\\" or a JSON schema"}', {})
    assert err.upstream_status == 400
    assert not err.falls_back
    assert err.http_status == 400


def test_decode_error_without_a_json_body() -> None:
    err = OllamaAdapter().decode_error(502, b"<html>Bad Gateway</html>\n", {})
    assert err.message == "Ollama returned HTTP 502: <html>Bad Gateway</html>"
    assert OllamaAdapter().decode_error(503, b"", {}).message == "Ollama returned HTTP 503"

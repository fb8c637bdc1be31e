"""AnthropicAdapter: OpenAI requests → Anthropic Messages bodies, Messages answers and errors back, from fixtures in
tests/fixtures/anthropic (no HTTP). Every body produced is checked against the official OpenAI schemas; every
fixture against the official anthropic SDK's models. Streams: test_anthropic_stream.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from aigw.errors import InvalidRequest, UpstreamError
from aigw.providers.anthropic import AnthropicAdapter
from aigw.providers.anthropic.request import tool_id
from aigw.providers.anthropic.wire import finish_reason
from aigw.providers.base import ChatAdapter, ChatInput, Framing, StreamIdentity
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.usage import Usage
from tests.support.openapi import validate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "anthropic"
IDENT = StreamIdentity(id="chatcmpl-abc123", created=1_751_900_000)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
MODEL = "claude-sonnet-4-5"


def chat(**fields: Any) -> ChatInput:
    raw = {"model": "smart", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


def encode(adapter: AnthropicAdapter | None = None, *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    up = (adapter or AnthropicAdapter()).encode_chat(chat(**fields), model=MODEL, stream=stream)
    assert up.path == "/v1/messages"
    assert up.method == "POST"
    body: dict[str, Any] = orjson.loads(up.body)
    return body


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_satisfies_the_protocol() -> None:
    adapter: ChatAdapter = AnthropicAdapter()
    assert adapter.framing is Framing.SSE


def test_fixtures_match_the_official_sdk_models() -> None:
    # A fixture that drifted from the real wire format would make every test below prove nothing.
    for path in sorted(FIXTURES.glob("message_*.json")):
        Message.model_validate_json(path.read_bytes())
    events: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    for path in sorted(FIXTURES.glob("stream_*.sse")):
        for frame in path.read_text().strip().split("\n\n"):
            name, data = frame.split("\n")
            payload = json.loads(data.removeprefix("data: "))
            assert name == f"event: {payload['type']}", path.name
            if payload["type"] not in ("ping", "error"):
                events.validate_python(payload)
    with pytest.raises(ValueError):
        Message.model_validate({"id": "msg_1", "type": "message", "content": []})  # the check can fail


# ---- request encoding ------------------------------------------------------------------------------------


def test_minimal_request_headers_and_required_max_tokens() -> None:
    up = AnthropicAdapter().encode_chat(chat(), model=MODEL, stream=False)
    assert up.headers == {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    assert orjson.loads(up.body) == {"model": MODEL, "max_tokens": 4096, "messages": [user(text("hi"))]}


def test_configured_version_and_default_max_tokens() -> None:
    adapter = AnthropicAdapter(anthropic_version="2026-10-21", default_max_tokens=512)
    up = adapter.encode_chat(chat(), model=MODEL, stream=False)
    assert up.headers["anthropic-version"] == "2026-10-21"
    assert orjson.loads(up.body)["max_tokens"] == 512
    with pytest.raises(ValueError):
        AnthropicAdapter(default_max_tokens=0)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert encode(max_tokens=100, max_completion_tokens=50)["max_tokens"] == 50
    assert encode(max_tokens=100)["max_tokens"] == 100


def test_stream_flag() -> None:
    assert encode(stream=True)["stream"] is True
    assert "stream" not in encode(stream=False)  # Anthropic's default is false


def test_system_and_developer_messages_are_hoisted_in_order() -> None:
    body = encode(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "why is the sky blue?"},
            {"role": "developer", "content": [text("Answer"), text(""), text("in English.")]},
            {"role": "assistant", "content": "rayleigh scattering."},
            {"role": "system", "content": "No jokes."},
            {"role": "user", "content": [text("and sunsets?")]},
        ]
    )
    assert body["system"] == [text("Be brief."), text("Answer"), text("in English."), text("No jokes.")]
    # The two user turns around the developer message merge: Anthropic wants strict alternation.
    assert body["messages"] == [
        user(text("why is the sky blue?")),
        {"role": "assistant", "content": [text("rayleigh scattering.")]},
        user(text("and sunsets?")),
    ]


def test_consecutive_same_role_turns_merge_and_empty_ones_vanish() -> None:
    body = encode(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": ""},
            {"role": "user", "content": [text("two")]},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": None, "refusal": "I can't."},
            {"role": "user", "content": "three"},
        ]
    )
    assert body["messages"] == [
        user(text("one"), text("two")),
        {"role": "assistant", "content": [text("a"), text("I can't.")]},
        user(text("three")),
    ]


def test_a_request_with_only_system_messages_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "system", "content": "hello"}, {"role": "user", "content": ""}])
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


def call(cid: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tools_tool_calls_and_tool_results_round_trip() -> None:
    body = encode(
        tools=[WEATHER_TOOL, TIME_TOOL],
        messages=[
            {"role": "user", "content": "weather and time in Toronto?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [call("call_w", "get_weather", '{"city": "Toronto"}'), call("call_t", "get_time", "")],
            },
            {"role": "tool", "tool_call_id": "call_w", "content": "11 degrees"},
            {"role": "tool", "tool_call_id": "call_t", "content": [text("14:05"), text("EST")]},
            {"role": "user", "content": "thanks, and tomorrow?"},
        ],
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the weather in a given city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "strict": True,
        },
        {"name": "get_time", "input_schema": {"type": "object"}},
    ]
    assert "tool_choice" not in body
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                text("Let me look."),
                {"type": "tool_use", "id": "call_w", "name": "get_weather", "input": {"city": "Toronto"}},
                {"type": "tool_use", "id": "call_t", "name": "get_time", "input": {}},
            ],
        },
        # Both results and the user's follow-up share one user turn, results first.
        user(
            {"type": "tool_result", "tool_use_id": "call_w", "content": "11 degrees"},
            {"type": "tool_result", "tool_use_id": "call_t", "content": [text("14:05"), text("EST")]},
            text("thanks, and tomorrow?"),
        ),
    ]


def test_tool_results_move_before_user_text_in_their_turn() -> None:
    body = encode(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [call("call_1", "get_time", "{}")]},
            {"role": "user", "content": "(also, be quick)"},
            {"role": "tool", "tool_call_id": "call_1", "content": ""},
        ]
    )
    assert body["messages"][2] == user(
        {"type": "tool_result", "tool_use_id": "call_1", "content": ""}, text("(also, be quick)")
    )


def test_foreign_tool_ids_are_made_valid_the_same_way_on_both_sides() -> None:
    body = encode(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [call("fc.1:a|b", "f", "{}"), call("fc.1:a_b", "f", "{}")]},
            {"role": "tool", "tool_call_id": "fc.1:a|b", "content": "x"},
            {"role": "tool", "tool_call_id": "fc.1:a_b", "content": "y"},
        ]
    )
    used = [b["id"] for b in body["messages"][1]["content"]]
    answered = [b["tool_use_id"] for b in body["messages"][2]["content"]]
    assert used == answered
    assert len(set(used)) == 2
    assert all(i.startswith("fc_1_a_b_") for i in used)
    assert tool_id("toolu_01A09q90qw90lq917835lq9") == "toolu_01A09q90qw90lq917835lq9"  # valid ids unchanged


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"city"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [call("c", "f", arguments)]},
            ]
        )
    assert ei.value.param == "messages"


def test_deprecated_function_call_and_function_message() -> None:
    body = encode(
        messages=[
            {"role": "user", "content": "time?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": "{}"}},
            {"role": "function", "name": "get_time", "content": "14:05"},
        ]
    )
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_get_time", "name": "get_time", "input": {}}],
        },
        user({"type": "tool_result", "tool_use_id": "call_get_time", "content": "14:05"}),
    ]


def test_images_from_data_uris_and_urls() -> None:
    content = [
        text("what is in these?"),
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG[:8]}"}},
        {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/cat.jpg"}},
    ]
    assert encode(messages=[{"role": "user", "content": content}])["messages"] == [
        user(
            text("what is in these?"),
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG[:8]}},
            {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/cat.jpg"}},
        )
    ]


@pytest.mark.parametrize("url", ["data:image/bmp;base64,AAAA", "data:image/png,rawbytes", "ftp://x/cat.png", "cat.png"])
def test_unusable_images_are_rejected(url: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert ei.value.param == "messages"


def test_inline_pdf_becomes_a_document_and_other_files_are_rejected() -> None:
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"}}
    assert encode(messages=[{"role": "user", "content": [pdf]}])["messages"] == [
        user({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}})
    ]
    for part in (
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ):
        with pytest.raises(InvalidRequest):
            encode(messages=[{"role": "user", "content": [part]}])


def test_cache_control_markers_are_forwarded() -> None:
    cc = {"type": "ephemeral"}
    body = encode(
        messages=[
            {"role": "system", "content": "long policy document", "cache_control": cc},
            {"role": "user", "content": [{"type": "text", "text": "context", "cache_control": cc}, text("question")]},
        ]
    )
    assert body["system"] == [{"type": "text", "text": "long policy document", "cache_control": cc}]
    assert body["messages"] == [user({"type": "text", "text": "context", "cache_control": cc}, text("question"))]


def test_non_function_tools_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(tools=[{"type": "custom", "function": {"name": "x"}}])
    assert ei.value.param == "tools"


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (NAMED, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (NAMED, False, {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert encode(**fields).get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in encode(tool_choice="required", parallel_tool_calls=False)


def test_stop_becomes_stop_sequences() -> None:
    assert encode(stop="\n\nHuman:")["stop_sequences"] == ["\n\nHuman:"]
    assert encode(stop=["5", "END"])["stop_sequences"] == ["5", "END"]
    assert "stop_sequences" not in encode(stop=[])
    assert encode(stop=["", "END"])["stop_sequences"] == ["END"]
    assert "stop_sequences" not in encode(stop="")


@pytest.mark.parametrize(("sent", "forwarded"), [(0, 0), (0.3, 0.3), (1.0, 1.0), (1.7, 1.0), (2, 1.0)])
def test_temperature_is_clamped_to_anthropics_range(sent: float, forwarded: float) -> None:
    assert encode(temperature=sent)["temperature"] == forwarded


def test_top_p_and_user() -> None:
    body = encode(top_p=0.9, user="user-42")
    assert body["top_p"] == 0.9
    assert body["metadata"] == {"user_id": "user-42"}


@pytest.mark.parametrize("version", ["2026-10-21", "2027-01-01"])
def test_versions_without_sampling_parameters_get_none(version: str) -> None:
    body = encode(AnthropicAdapter(anthropic_version=version), temperature=0.2, top_p=0.5)
    assert "temperature" not in body and "top_p" not in body and "top_k" not in body


def test_openai_only_fields_are_not_forwarded() -> None:
    body = encode(presence_penalty=1.0, frequency_penalty=0.5, seed=7, service_tier="flex", logprobs=False)
    assert set(body) == {"model", "max_tokens", "messages"}


def test_n_above_one_and_logprobs_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(n=2)
    assert ei.value.param == "n"
    with pytest.raises(InvalidRequest) as ei:
        encode(logprobs=True, top_logprobs=2)
    assert ei.value.param == "logprobs"
    assert encode(n=1)["messages"]


SCHEMA = {
    "type": "object",
    "properties": {"age": {"type": "integer"}},
    "required": ["age"],
    "additionalProperties": False,
}


def test_json_schema_response_format_becomes_structured_output() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    assert encode(response_format=rf)["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "output_config" not in encode(response_format={"type": "text"})


@pytest.mark.parametrize(
    "rf", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "yaml"}]
)
def test_response_formats_without_an_equivalent_are_a_clear_400(rf: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(response_format=rf)
    assert ei.value.param == "response_format"
    assert ei.value.http_status == 400


# ---- response decoding -----------------------------------------------------------------------------------


def decode(name: str) -> tuple[Any, dict[str, Any]]:
    completion = AnthropicAdapter().decode_chat(fixture(name), model=MODEL, ident=IDENT)
    body: dict[str, Any] = orjson.loads(completion.body)
    validate("CreateChatCompletionResponse", body)
    return completion, body


def test_decode_text() -> None:
    completion, body = decode("message_text.json")
    assert body == {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_751_900_000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi! My name is Claude.", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 2095,
            "completion_tokens": 503,
            "total_tokens": 2598,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert completion.usage == Usage(prompt_tokens=2095, completion_tokens=503)
    assert completion.response_model == "claude-sonnet-4-5-20250929"
    assert completion.finish_reason == "stop"


def test_decode_text_and_tool_use() -> None:
    completion, body = decode("message_tool_use.json")
    message = body["choices"][0]["message"]
    assert message["content"] == "I'll check the current weather in San Francisco for you."
    assert message["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA","unit":"celsius"}'},
        }
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert completion.finish_reason == "tool_calls"


def test_decode_parallel_tool_use() -> None:
    _, body = decode("message_parallel_tools.json")
    message = body["choices"][0]["message"]
    assert message["content"] is None  # tool calls only: null, as OpenAI sends
    calls = message["tool_calls"]
    assert [c["id"] for c in calls] == [
        "toolu_01EW2XgYmjBkhCt3Hy8Lh5Lz",
        "toolu_01HHFQeqzs1Y8hdUkCe2oahL",
        "toolu_01Pg8xHDNTkPAcT4e1VjEZ2n",
    ]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"location": "San Francisco, CA"}),
        ("get_time", {"timezone": "America/Los_Angeles"}),
        ("list_files", {}),
    ]


@pytest.mark.parametrize(
    ("name", "finish", "content"),
    [
        ("message_max_tokens.json", "length", "Once upon a time, in a land far"),
        ("message_stop_sequence.json", "stop", "1, 2, 3, 4, "),
        ("message_refusal.json", "content_filter", "I can't help with that."),
        ("message_thinking.json", "stop", "27 * 453 = 12,231"),  # thinking blocks are not the answer
        ("message_pause_turn.json", "stop", "Let me keep looking."),  # server tool blocks are skipped
    ],
)
def test_decode_stop_reasons_and_skipped_blocks(name: str, finish: str, content: str) -> None:
    completion, body = decode(name)
    choice = body["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == (finish, content)
    assert "tool_calls" not in choice["message"]
    assert completion.finish_reason == finish


def test_decode_cache_usage() -> None:
    completion, body = decode("message_cache.json")
    # prompt_tokens counts the whole prompt, as OpenAI's does: 21 uncached + 188 written + 1800 read.
    assert body["usage"] == {
        "prompt_tokens": 2009,
        "completion_tokens": 393,
        "total_tokens": 2402,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }
    assert completion.usage == Usage(
        prompt_tokens=2009, completion_tokens=393, cached_prompt_tokens=1800, cache_write_tokens=188
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("some_future_reason", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reason_mapping(stop_reason: str | None, finish: str) -> None:
    assert finish_reason(stop_reason) == finish


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1]", b'{"id": "msg_1"}'])
def test_decode_rejects_what_is_not_a_message(body: bytes) -> None:
    with pytest.raises(UpstreamError) as ei:
        AnthropicAdapter().decode_chat(body, model=MODEL, ident=IDENT)
    assert ei.value.upstream_status == 502


def test_an_error_body_behind_a_200_keeps_its_type() -> None:
    with pytest.raises(UpstreamError) as ei:
        AnthropicAdapter().decode_chat(fixture("error_529.json"), model=MODEL, ident=IDENT)
    assert (ei.value.upstream_status, ei.value.upstream_type, ei.value.message) == (
        529,
        "overloaded_error",
        "Overloaded",
    )


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "etype", "falls_back", "http_status"),
    [
        ("error_400.json", 400, "invalid_request_error", False, 400),
        ("error_401.json", 401, "authentication_error", True, 502),
        ("error_413.json", 413, "request_too_large", False, 413),
        ("error_429.json", 429, "rate_limit_error", True, 502),
        ("error_500.json", 500, "api_error", True, 502),
        ("error_529.json", 529, "overloaded_error", True, 502),
    ],
)
def test_decode_error(name: str, status: int, etype: str, falls_back: bool, http_status: int) -> None:
    err = AnthropicAdapter().decode_error(status, fixture(name), {})
    body = orjson.loads(fixture(name))
    assert err.message == body["error"]["message"]
    assert (err.upstream_status, err.upstream_type) == (status, etype)
    assert err.falls_back is falls_back
    assert err.http_status == http_status
    if not falls_back:
        assert err.error_type == etype  # a request error goes back to the client in Anthropic's words


def test_decode_error_carries_retry_after() -> None:
    adapter = AnthropicAdapter()
    assert adapter.decode_error(429, fixture("error_429.json"), {"retry-after": "17"}).retry_after == 17.0
    assert adapter.decode_error(529, fixture("error_529.json"), {"retry-after-ms": "1500"}).retry_after == 1.5
    assert adapter.decode_error(429, fixture("error_429.json"), {}).retry_after is None


def test_decode_error_code_from_details() -> None:
    details = {"error_code": "enforced_spend_limit_reached"}
    body = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "m", "details": details}})
    err = AnthropicAdapter().decode_error(429, body, {})
    assert err.error_code == "enforced_spend_limit_reached"


def test_decode_error_without_a_json_body() -> None:
    err = AnthropicAdapter().decode_error(502, b"<html>Bad Gateway</html>\n", {})
    assert err.message == "Anthropic returned HTTP 502: <html>Bad Gateway</html>"
    assert err.upstream_type is None
    assert AnthropicAdapter().decode_error(503, b"", {}).message == "Anthropic returned HTTP 503"

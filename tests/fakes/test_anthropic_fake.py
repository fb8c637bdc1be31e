"""FakeAnthropic speaks the real protocol: driven by the official ``anthropic`` SDK (sync and async, raw streams
and the ``messages.stream`` helper), raw bodies and frames checked against the SDK's own models."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageParam, RawMessageStreamEvent, ToolParam
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from tests.fakes import faults, text
from tests.fakes.anthropic_fake import FakeAnthropic

MODEL = "claude-sonnet-4-6"
USER: list[MessageParam] = [{"role": "user", "content": "hello   there\nworld"}]
TOOLS: list[ToolParam] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
    {
        "name": "get_time",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}, "n": {"type": "integer"}}},
    },
]
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def client(fake_anthropic: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake_anthropic.base_url, api_key=fake_anthropic.api_key, max_retries=0) as c:
        yield c


def raw_post(
    fake: FakeAnthropic, body: Any, *, version: str | None = "2023-06-01", key: str | None = None
) -> httpx.Response:
    headers = {"x-api-key": key or fake.api_key or ""}
    if version is not None:
        headers["anthropic-version"] = version
    return httpx.post(fake.base_url + "/v1/messages", json=body, headers=headers, timeout=10)


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The SSE frames exactly as framed on the wire: ``event: <type>\\ndata: <json>\\n\\n``."""
    assert raw.endswith(b"\n\n")
    out = []
    for frame in raw.decode().removesuffix("\n\n").split("\n\n"):
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        out.append((payload["type"], payload))
    return out


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": USER, **fields}


def test_message_non_stream(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    r = client.messages.create(model=MODEL, max_tokens=100, system="be brief", messages=USER)
    assert r.id.startswith("msg_01") and r.type == "message" and r.role == "assistant"
    assert r.model == MODEL
    assert [b.type for b in r.content] == ["text"]
    assert r.content[0].type == "text" and r.content[0].text == "Echo: hello there world"
    assert (r.stop_reason, r.stop_sequence) == ("end_turn", None)
    assert (r.usage.input_tokens, r.usage.output_tokens) == (5, 4)  # words: "be brief" + 3; "Echo:" + 3
    assert (r.usage.cache_read_input_tokens, r.usage.cache_creation_input_tokens) == (0, 0)
    recorded = fake_anthropic.last_request
    assert recorded.headers["authorization"] == f"Bearer {fake_anthropic.api_key}"  # what SDK 2.x sends
    assert recorded.headers["anthropic-version"] == "2026-10-21"

    raw = raw_post(fake_anthropic, body())  # the x-api-key header, as the gateway sends it
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/json")
    assert raw.headers["request-id"].startswith("req_")
    Message.model_validate(raw.json())


def test_raw_stream_event_order_and_framing(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text_deltas = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert text_deltas == ["Echo:", " hello", " there", " world"]

    with httpx.stream(
        "POST", fake_anthropic.base_url + "/v1/messages", json=body(stream=True), timeout=10,
        headers={"x-api-key": fake_anthropic.api_key or "", "anthropic-version": "2023-06-01"},
    ) as resp:  # fmt: skip
        assert resp.headers["content-type"].startswith("text/event-stream")
        parsed = frames(resp.read())
    assert [t for t, _ in parsed][:3] == ["message_start", "content_block_start", "ping"]  # ping as the docs show
    for kind, payload in parsed:
        if kind != "ping":
            EVENTS.validate_python(payload)
    start, delta = parsed[0][1], parsed[-2][1]
    assert start["message"]["usage"]["output_tokens"] == 1
    assert delta["usage"]["output_tokens"] == 4  # cumulative: the total, not what came after message_start
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


async def test_stream_helper_final_message_matches_non_stream_async(fake_anthropic: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=fake_anthropic.base_url, api_key=fake_anthropic.api_key, max_retries=0
    ) as c:
        plain = await c.messages.create(model=MODEL, max_tokens=100, messages=USER)
        async with c.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            pieces = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(pieces) == "Echo: hello there world"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "Echo: hello there world")]
    assert plain.content[0].type == "text" and plain.content[0].text == "Echo: hello there world"
    assert final.usage == plain.usage
    assert final.stop_reason == plain.stop_reason == "end_turn"


def test_parallel_tool_use_streamed_then_tool_results(client: anthropic.Anthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "weather and time in parallel"}]
    with client.messages.stream(model=MODEL, max_tokens=200, messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    calls = [b for b in final.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [
        ("get_weather", {"city": "weather and time in parallel", "unit": "c"}),
        ("get_time", {"tz": "weather and time in parallel", "n": 5}),
    ]
    assert all(c.id.startswith("toolu_01") for c in calls) and calls[0].id != calls[1].id
    planned = text.plan_tool_calls([{"function": {"name": t["name"], "parameters": t["input_schema"]}} for t in TOOLS],
                                   "weather and time in parallel")  # fmt: skip
    assert final.usage.output_tokens == text.tool_call_tokens(planned)

    follow_up: list[MessageParam] = [
        *messages,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": "11 degrees"},
            {"type": "tool_result", "tool_use_id": calls[1].id, "content": [{"type": "text", "text": "14:05 PST"}]},
        ]},
    ]  # fmt: skip
    r = client.messages.create(model=MODEL, max_tokens=200, messages=follow_up, tools=TOOLS)
    assert r.stop_reason == "end_turn"
    assert r.content[0].type == "text" and r.content[0].text == "Echo: 14:05 PST"  # the last result's text

    forced = client.messages.create(
        model=MODEL, max_tokens=200, messages=follow_up, tools=TOOLS, tool_choice={"type": "any"}
    )
    assert forced.stop_reason == "tool_use"  # `any` forces a call even after tool results


def test_tool_choice_variants(client: anthropic.Anthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "both in parallel please"}]
    single = client.messages.create(
        model=MODEL, max_tokens=100, messages=messages, tools=TOOLS,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )  # fmt: skip
    assert [b.type for b in single.content] == ["tool_use"]
    named = client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, tools=TOOLS, tool_choice={"type": "tool", "name": "get_time"}
    )
    assert [b.name for b in named.content if b.type == "tool_use"] == ["get_time"]
    none = client.messages.create(model=MODEL, max_tokens=100, messages=USER, tools=TOOLS, tool_choice={"type": "none"})
    assert none.content[0].type == "text" and none.stop_reason == "end_turn"


def test_stop_sequences_max_tokens_and_structured_output(client: anthropic.Anthropic) -> None:
    r = client.messages.create(model=MODEL, max_tokens=100, messages=USER, stop_sequences=["nope", "there"])
    assert r.content[0].type == "text" and r.content[0].text == "Echo: hello "
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", "there")
    r = client.messages.create(model=MODEL, max_tokens=2, messages=USER)
    assert r.content[0].type == "text" and r.content[0].text == "Echo: hello"
    assert (r.stop_reason, r.usage.output_tokens) == ("max_tokens", 2)
    schema = {
        "type": "object",
        "properties": {"words": {"type": "integer"}},
        "required": ["words"],
        "additionalProperties": False,
    }
    r = client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, output_config={"format": {"type": "json_schema", "schema": schema}}
    )
    assert r.content[0].type == "text" and json.loads(r.content[0].text) == {"words": 3}


def test_prompt_cache_write_then_read(client: anthropic.Anthropic) -> None:
    system: Any = [
        {"type": "text", "text": "a long shared policy of seven words", "cache_control": {"type": "ephemeral"}}
    ]
    first = client.messages.create(model=MODEL, max_tokens=100, system=system, messages=USER)
    second = client.messages.create(model=MODEL, max_tokens=100, system=system, messages=USER)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens, first.usage.input_tokens) == (
        7,
        0,
        3,
    )
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, 7)
    assert second.usage.input_tokens == 3
    assert first.usage.cache_creation is not None and first.usage.cache_creation.ephemeral_5m_input_tokens == 7


def test_status_faults_become_sdk_errors(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.inject(faults.status(429, retry_after="7"))
    with pytest.raises(anthropic.RateLimitError) as rl:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert rl.value.status_code == 429 and rl.value.type == "rate_limit_error"
    assert rl.value.response.headers["retry-after"] == "7"
    ErrorResponse.model_validate(rl.value.body)

    fake_anthropic.inject(faults.status(500))
    with pytest.raises(anthropic.InternalServerError) as ie:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert ie.value.type == "api_error"

    fake_anthropic.inject(faults.status(529))
    with pytest.raises(anthropic.OverloadedError) as oe:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER, stream=True)
    assert (oe.value.status_code, oe.value.type, oe.value.api_message) == (529, "overloaded_error", "Overloaded")


async def test_mid_stream_error_event_raises_async(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.inject(faults.error_after(3))
    async with anthropic.AsyncAnthropic(
        base_url=fake_anthropic.base_url, api_key=fake_anthropic.api_key, max_retries=0
    ) as c:
        seen: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as ei:
            stream = await c.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True)
            async for event in stream:  # a loop, not a comprehension: keep what came before the error
                seen.append(event.type)  # noqa: PERF401
    assert seen == ["message_start", "content_block_start"]  # frame 2 is the ping, which the SDK skips
    assert (ei.value.type, ei.value.api_message) == ("overloaded_error", "Overloaded")

    fake_anthropic.inject(dataclasses.replace(faults.error_after(1, "Internal server error"), error_type="api_error"))
    raw = raw_post(fake_anthropic, body(stream=True)).content
    assert frames(raw) == [
        frames(raw)[0],
        ("error", {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}),
    ]


def test_credentials_and_version_header(fake_anthropic: FakeAnthropic) -> None:
    bad = anthropic.Anthropic(base_url=fake_anthropic.base_url, api_key="sk-ant-wrong", max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError) as ae:
        bad.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert ae.value.type == "authentication_error" and ae.value.api_message == "invalid x-api-key"
    missing = httpx.post(
        fake_anthropic.base_url + "/v1/messages", json=body(), headers={"anthropic-version": "2023-06-01"}
    )
    assert (missing.status_code, missing.json()["error"]["message"]) == (401, "x-api-key header is required")
    for version, message in (
        (None, "anthropic-version: header is required"),
        ("2024-01-01", "anthropic-version: invalid"),
    ):
        r = raw_post(fake_anthropic, body(), version=version)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(message)
        ErrorResponse.model_validate(r.json())
    unknown = raw_post(fake_anthropic, {}, version=None)
    assert unknown.status_code == 400
    assert httpx.get(fake_anthropic.base_url + "/v1/nope").json()["error"] == {
        "type": "not_found_error",
        "message": "Not Found",
    }


def test_sampling_parameters_depend_on_the_version(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as br:  # the SDK sends 2026-10-21, which removed them
        client.messages.create(model=MODEL, max_tokens=10, messages=USER, extra_body={"temperature": 1.0})
    assert br.value.api_message == "temperature: Extra inputs are not permitted"
    assert raw_post(fake_anthropic, body(temperature=0.5, top_p=0.9), version="2023-06-01").status_code == 200
    too_hot = raw_post(fake_anthropic, body(temperature=1.5), version="2023-06-01")
    assert too_hot.status_code == 400 and too_hot.json()["error"]["type"] == "invalid_request_error"


TOOL_USE = {"type": "tool_use", "id": "toolu_01A", "name": "get_time", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "14:05"}
HI = {"role": "user", "content": "hi"}
CALLED = {"role": "assistant", "content": [TOOL_USE]}
UNANSWERED = [HI, CALLED, {"role": "user", "content": "x"}]
RESULT_LATE = [HI, CALLED, {"role": "user", "content": [{"type": "text", "text": "x"}, RESULT]}]
ORPHAN_RESULT = [HI, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [RESULT]}]
BAD_ID = [HI, {"role": "assistant", "content": [{**TOOL_USE, "id": "call.1"}]}]
BMP = {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AAAA"}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"n": 2}, "n: Extra inputs are not permitted"),
        ({"messages": [{"role": "system", "content": "x"}, HI]}, 'Unexpected role "system"'),
        ({"messages": [HI, HI]}, 'found multiple "user" roles in a row'),
        ({"messages": [{"role": "user", "content": ""}]}, "all messages must have non-empty content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "text content blocks must be"),
        (
            {"messages": UNANSWERED},
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_01A",
        ),
        ({"messages": RESULT_LATE}, "Did not find 1 `tool_result` block(s) at the beginning"),
        ({"messages": ORPHAN_RESULT}, "unexpected `tool_use_id` found in `tool_result` blocks: toolu_01A"),
        ({"messages": BAD_ID}, "tool_use.id: String should match pattern"),
        ({"messages": [{"role": "user", "content": [BMP]}]}, "media_type"),
        ({"tools": [{"name": "get weather", "input_schema": {"type": "object"}}]}, "tools.0.custom.name: String"),
        ({"tools": [{"name": "f", "parameters": {}}]}, "tools.0.custom.parameters: Extra inputs are not permitted"),
        ({"tool_choice": {"type": "any"}}, "tool_choice may only be specified while providing tools"),
        ({"system": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]}, "cache_control.type"),
    ],
)
def test_messages_rules_are_enforced(fake_anthropic: FakeAnthropic, fields: dict[str, Any], message: str) -> None:
    request = {k: v for k, v in body(**fields).items() if v is not None}
    r = raw_post(fake_anthropic, request)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert message in r.json()["error"]["message"]
    ErrorResponse.model_validate(r.json())


def test_valid_conversation_with_images_and_results_first_passes(fake_anthropic: FakeAnthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look"}, image, url]},
        {"role": "assistant", "content": [{"type": "text", "text": "checking"}, TOOL_USE]},
        {"role": "user", "content": [RESULT, {"type": "text", "text": "and?"}]},
    ]
    r = raw_post(
        fake_anthropic, body(messages=messages, tools=[{"name": "get_time", "input_schema": {"type": "object"}}])
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == [{"type": "text", "text": "Echo: and?"}]
    # 1 ("look") + 1 ("checking") + 2 (tool_use: name + compact input) + 1 ("14:05") + 1 ("and?")
    assert r.json()["usage"]["input_tokens"] == 6


def test_unknown_model_and_dated_response_names() -> None:
    fake = FakeAnthropic(response_models={"claude-haiku-4-5": "claude-haiku-4-5-20251001"})
    with fake, anthropic.Anthropic(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as c:
        with pytest.raises(anthropic.NotFoundError) as nf:
            c.messages.create(model="claude-nope", max_tokens=10, messages=USER)
        assert nf.value.api_message == "model: claude-nope"
        assert (
            c.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER).model
            == "claude-haiku-4-5-20251001"
        )

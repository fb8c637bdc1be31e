"""Provider conformance for tools, end to end (see ``test_conformance.py``): assistant ``tool_calls`` and ``role:
tool`` results converted into each upstream's own shape, ``tool_choice`` variants, ``parallel_tool_calls: false``
and streamed tool calls through the SDK's stream helper. What the client sees must not depend on the provider."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import Stack
from tests.api.test_conformance import reported, sent
from tests.api.test_streams_faults import bedrock_signed  # noqa: F401 - autouse: no SigV4 rejection, ever
from tests.support.openapi import validate_sse_stream

MODELS = ["bedrock", "claude", "gpt", "llama"]
CHAT = "/v1/chat/completions"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time", "parameters": WEATHER}},
]
ASK: list[Any] = [{"role": "user", "content": "weather in Paris"}]
PARALLEL: list[Any] = [{"role": "user", "content": "use parallel tools for Paris"}]

pytestmark = pytest.mark.parametrize("model", MODELS)


def calls_of(completion: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls or []]


def test_tool_result_is_converted_for_the_upstream(model: str, client: openai.OpenAI, stack: Stack) -> None:
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    assert calls_of(first) == [("get_weather", {"city": "weather in Paris"})]
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == reported(stack, model)
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and warm"},
    ]
    follow = client.chat.completions.create(model=model, messages=history, tools=TOOLS)
    assert follow.choices[0].message.content == "Echo: sunny and warm"
    assert follow.choices[0].finish_reason == "stop" and not follow.choices[0].message.tool_calls
    assert follow.usage is not None
    assert (follow.usage.prompt_tokens, follow.usage.completion_tokens) == reported(stack, model)

    msgs = sent(stack, model)["messages"]
    args = {"city": "weather in Paris"}
    if model == "gpt":
        assert msgs == history
    elif model == "llama":
        assert msgs[1] == {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": call.id, "function": {"name": "get_weather", "arguments": args}}],
        }, "arguments as a JSON object"
        assert msgs[2] == {
            "role": "tool",
            "content": "sunny and warm",
            "tool_call_id": call.id,
            "tool_name": "get_weather",
        }
    elif model == "claude":
        assert msgs[1:] == [
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": args}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny and warm"}]},
        ]
    else:
        assert msgs[1:] == [
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": args}}],
            },
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny and warm"}]}}],
            },
        ]


def test_parallel_tool_results_share_one_user_turn(model: str, client: openai.OpenAI, stack: Stack) -> None:
    first = client.chat.completions.create(model=model, messages=PARALLEL, tools=TOOLS)
    calls: list[Any] = first.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    results = ["rain at noon", "nine in the morning"]
    history: list[Any] = [
        *PARALLEL,
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
        *({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results, strict=True)),
        {"role": "user", "content": "and now summarise"},
    ]
    # tool_choice "none" with tools in the history: Bedrock needs a toolConfig anyway, Anthropic a tool_choice none.
    follow = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none")
    assert follow.choices[0].message.content == "Echo: and now summarise"
    assert not follow.choices[0].message.tool_calls

    body = sent(stack, model)
    msgs = body["messages"]
    if model == "gpt":
        assert msgs == history
    elif model == "llama":
        names = [("tool", c.id, c.function.name) for c in calls]
        assert [(m["role"], m.get("tool_call_id"), m.get("tool_name")) for m in msgs[2:4]] == names
        assert [m["content"] for m in msgs[2:4]] == results
    elif model == "claude":
        assert [b["id"] for b in msgs[1]["content"]] == [c.id for c in calls]
        assert msgs[2] == {
            "role": "user",
            "content": [
                *(
                    {"type": "tool_result", "tool_use_id": c.id, "content": r}
                    for c, r in zip(calls, results, strict=True)
                ),
                {"type": "text", "text": "and now summarise"},
            ],
        }, "tool results first, in one user turn"
        assert body["tool_choice"] == {"type": "none"}
    else:
        assert [b["toolUse"]["toolUseId"] for b in msgs[1]["content"]] == [c.id for c in calls]
        assert msgs[2] == {
            "role": "user",
            "content": [
                *(
                    {"toolResult": {"toolUseId": c.id, "content": [{"text": r}]}}
                    for c, r in zip(calls, results, strict=True)
                ),
                {"text": "and now summarise"},
            ],
        }
        assert "toolConfig" in body, "Converse refuses tool blocks without a toolConfig"


def test_tool_choice_none_calls_no_tool(model: str, client: openai.OpenAI, stack: Stack) -> None:
    completion = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="none")
    assert completion.choices[0].message.content == "Echo: weather in Paris"
    assert completion.choices[0].finish_reason == "stop" and not completion.choices[0].message.tool_calls
    body = sent(stack, model)
    if model == "gpt":
        assert body["tool_choice"] == "none"
    elif model == "claude":
        assert body["tool_choice"] == {"type": "none"}
    else:
        assert "tools" not in body and "toolConfig" not in body, "no tools offered at all"


def test_tool_choice_required(model: str, client: openai.OpenAI, stack: Stack) -> None:
    completion = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required")
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls_of(completion) == [("get_weather", {"city": "weather in Paris"})]
    body = sent(stack, model)
    if model == "gpt":
        assert body["tool_choice"] == "required"
    elif model == "claude":
        assert body["tool_choice"] == {"type": "any"}
    elif model == "bedrock":
        assert body["toolConfig"]["toolChoice"] == {"any": {}}
    else:
        assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]


def test_named_tool_choice_calls_that_tool(model: str, client: openai.OpenAI, stack: Stack) -> None:
    # The second tool, so that "the model's first pick" and "the named tool" differ.
    named: Any = {"type": "function", "function": {"name": "get_time"}}
    completion = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=named)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls_of(completion) == [("get_time", {"city": "weather in Paris"})], "tool_choice names get_time"
    body = sent(stack, model)
    if model == "claude":
        assert body["tool_choice"] == {"type": "tool", "name": "get_time"}
    elif model == "bedrock":
        assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_time"}}


def test_parallel_tool_calls_false_gives_at_most_one_call(model: str, client: openai.OpenAI, stack: Stack) -> None:
    allowed = client.chat.completions.create(model=model, messages=PARALLEL, tools=TOOLS)
    assert len(allowed.choices[0].message.tool_calls or []) == 2, "this prompt makes every fake call two tools"
    single = client.chat.completions.create(model=model, messages=PARALLEL, tools=TOOLS, parallel_tool_calls=False)
    assert single.choices[0].finish_reason == "tool_calls"
    assert [name for name, _ in calls_of(single)] == ["get_weather"], "parallel_tool_calls: false"
    body = sent(stack, model)
    if model == "gpt":
        assert body["parallel_tool_calls"] is False
    elif model == "claude":
        assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_streaming_tool_calls_with_the_stream_helper(
    model: str, client: openai.OpenAI, http: httpx.Client, stack: Stack
) -> None:
    fragments: list[str] = []
    done: list[tuple[int, str, str]] = []
    with client.chat.completions.stream(
        model=model, messages=ASK, tools=TOOLS, stream_options={"include_usage": True}
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                fragments.append(event.arguments_delta)
            elif event.type == "tool_calls.function.arguments.done":
                done.append((event.index, event.name, event.arguments))
        final = stream.get_final_completion()
    assert len(done) == 1 and done[0][:2] == (0, "get_weather")
    assert json.loads(done[0][2]) == {"city": "weather in Paris"} and "".join(fragments) == done[0][2]
    assert final.choices[0].finish_reason == "tool_calls"
    assert calls_of(final) == [("get_weather", {"city": "weather in Paris"})]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == reported(stack, model)

    # On the wire, as OpenAI streams a call: one header delta (index, id, type, name), then index + arguments.
    raw = http.post(CHAT, json={"model": model, "messages": ASK, "tools": TOOLS, "stream": True})
    chunks = validate_sse_stream(raw.content)
    deltas = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls") or []]
    headers = [d for d in deltas if d.get("id")]
    assert len(headers) == 1 and headers[0]["type"] == "function" and headers[0]["function"]["name"] == "get_weather"
    assert all(d["index"] == 0 for d in deltas) and deltas[0] is headers[0]
    assert all("name" not in d.get("function", {}) for d in deltas[1:])
    assert json.loads("".join(d["function"].get("arguments") or "" for d in deltas)) == {"city": "weather in Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["choices"][0]["delta"].get("role") for c in chunks[:1]] == ["assistant"]

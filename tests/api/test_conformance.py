"""Provider conformance, end to end: one OpenAI-SDK client, four targets (OpenAI, Ollama native, Anthropic Messages,
Bedrock Converse) that differ only in ``model``. Each scenario checks what the client sees *and* what reached the
upstream in its own wire shape (the fakes record every request), so a translation that merely "works" is not
enough. Tools are in ``test_conformance_tools.py``; text, stop/length and parallel tool calls in ``test_chat.py``.

Token counts come from the fakes' own planners applied to the recorded upstream request: "what the provider
reported", normalised to OpenAI's meaning (``prompt_tokens`` includes cached prompt tokens).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import Stack, TenantKey
from tests.api.test_streams_faults import bedrock_signed  # noqa: F401 - autouse: no SigV4 rejection, ever
from tests.fakes import text
from tests.fakes.anthropic_fake import plan_message
from tests.fakes.bedrock_fake import openai_view
from tests.fakes.faults import RecordedRequest
from tests.fakes.ollama_fake import _plan as plan_ollama
from tests.fakes.openai_chat import plan_chat
from tests.support.gateway import RunningGateway
from tests.support.ledger import ledger
from tests.support.openapi import validate, validate_sse_stream

MODELS = {"gpt": "oai", "llama": "local", "claude": "claude", "bedrock": "aws"}
ALL = sorted(MODELS)
CHAT = "/v1/chat/completions"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
IMAGE_URL = "https://images.example.com/cat.png"
TWO_SYSTEMS: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": "Answer in plain words."},
    {"role": "user", "content": "my name is Ada"},
    {"role": "user", "content": "and I like tea"},
    {"role": "assistant", "content": "Hello Ada"},
    {"role": "assistant", "content": "tea is nice"},
    {"role": "system", "content": "Stay polite."},
    {"role": "user", "content": "what do I like"},
]


# -- helpers shared with test_conformance_tools.py --------------------------------------------------------------


def chat_requests(stack: Stack, model: str) -> list[RecordedRequest]:
    """The chat requests the model's upstream received, in order (signature failures included)."""
    if model == "gpt":
        return stack.oai.requests_to("/v1/chat/completions")
    if model == "llama":
        return stack.olla.requests_to("/api/chat")
    if model == "claude":
        return stack.ant.requests_to("/v1/messages")
    return [r for r in stack.brk.requests if r.path.rsplit("/", 1)[-1] in ("converse", "converse-stream")]


def sent(stack: Stack, model: str) -> dict[str, Any]:
    """The body of the last chat request the upstream received, in the upstream's wire shape."""
    reqs = chat_requests(stack, model)
    assert reqs, f"{model}: the upstream was never called"
    body: dict[str, Any] = reqs[-1].json
    return body


def reported(stack: Stack, model: str) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the upstream reported for the last chat request, in OpenAI's meaning:
    Anthropic's and Bedrock's input tokens plus their cache reads and writes."""
    body = sent(stack, model)
    if model == "gpt":
        plan = plan_chat(body)
        return plan.prompt_tokens, plan.completion_tokens
    if model == "llama":
        metrics = plan_ollama(body, thinking=False)["metrics"]
        return metrics.get("prompt_eval_count", 0), metrics.get("eval_count", 0)
    if model == "claude":
        ant = plan_message(body, set())  # a fresh cache: the prefix counts as written, the total is the same
        return ant.input_tokens + ant.cache_read + ant.cache_write, ant.output_tokens
    brk = plan_chat(openai_view(body))
    return brk.prompt_tokens + stack.brk.cache_read_tokens + stack.brk.cache_write_tokens, brk.completion_tokens


def block(s: str) -> dict[str, str]:
    return {"type": "text", "text": s}


def words(messages: list[Any]) -> int:
    return sum(text.count_tokens(text.message_text(m)) for m in messages)


def admin_usage(gw: RunningGateway, tenant: TenantKey) -> dict[str, Any]:
    gw.flush_usage()
    r = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- multi-turn, system prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL)
def test_multi_turn_conversation_reaches_the_upstream_in_its_shape(
    model: str, client: openai.OpenAI, stack: Stack, gw: RunningGateway
) -> None:
    completion = client.chat.completions.create(model=model, messages=TWO_SYSTEMS)
    assert completion.choices[0].message.content == "Echo: what do I like"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (words(TWO_SYSTEMS), 5)
    body = sent(stack, model)
    systems = ["Be brief.", "Answer in plain words.", "Stay polite."]  # hoisted in order, wherever they stood
    if model == "gpt":
        assert body["messages"] == TWO_SYSTEMS and body["model"] == "gpt-4o-mini"
    elif model == "llama":
        roles = ["system", "system", "user", "user", "assistant", "assistant", "system", "user"]
        want = [{"role": r, "content": m["content"]} for r, m in zip(roles, TWO_SYSTEMS, strict=True)]
        assert body["messages"] == want, "developer becomes system; Ollama takes consecutive roles as they are"
    elif model == "claude":
        assert body["system"] == [block(s) for s in systems]
        assert body["messages"] == [
            {"role": "user", "content": [block("my name is Ada"), block("and I like tea")]},
            {"role": "assistant", "content": [block("Hello Ada"), block("tea is nice")]},
            {"role": "user", "content": [block("what do I like")]},
        ]
    else:
        assert body["system"] == [{"text": s} for s in systems]
        assert body["messages"] == [
            {"role": "user", "content": [{"text": "my name is Ada"}, {"text": "and I like tea"}]},
            {"role": "assistant", "content": [{"text": "Hello Ada"}, {"text": "tea is nice"}]},
            {"role": "user", "content": [{"text": "what do I like"}]},
        ]

    # The streamed request carries the same conversation.
    chunks = list(client.chat.completions.create(model=model, messages=TWO_SYSTEMS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: what do I like"
    streamed = sent(stack, model)
    drop = ("stream", "stream_options")
    assert {k: v for k, v in streamed.items() if k not in drop} == {k: v for k, v in body.items() if k not in drop}


@pytest.mark.parametrize("model", ALL)
@pytest.mark.parametrize("stream", [False, True])
def test_system_prompt_reaches_the_upstream(model: str, stream: bool, http: httpx.Client, stack: Stack) -> None:
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "ahoy there"}]
    r = http.post(CHAT, json={"model": model, "messages": messages, "stream": stream})
    assert r.status_code == 200, r.text
    if stream:
        chunks = validate_sse_stream(r.content)
        assert (
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Echo: ahoy there"
        )
    else:
        validate("CreateChatCompletionResponse", r.json())
        assert r.json()["choices"][0]["message"]["content"] == "Echo: ahoy there"
        assert r.json()["usage"]["prompt_tokens"] == 6
    assert reported(stack, model) == (6, 3), "the system prompt was counted: it reached the model"
    body = sent(stack, model)
    if model in ("gpt", "llama"):
        assert body["messages"] == messages
    elif model == "claude":
        assert body["system"] == [block("You are a pirate.")]
        assert body["messages"] == [{"role": "user", "content": [block("ahoy there")]}]
    else:
        assert body["system"] == [{"text": "You are a pirate."}]
        assert body["messages"] == [{"role": "user", "content": [{"text": "ahoy there"}]}]


# -- images ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL)
def test_image_data_uri_reaches_the_upstream_natively(model: str, client: openai.OpenAI, stack: Stack) -> None:
    part: Any = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "describe this picture"}, part]}]
    completion = client.chat.completions.create(model=model, messages=messages)
    assert completion.choices[0].message.content == "Echo: describe this picture"
    turn = sent(stack, model)["messages"][-1]
    if model == "gpt":
        assert turn == messages[0], "OpenAI gets the image part unchanged"
    elif model == "llama":
        assert turn == {"role": "user", "content": "describe this picture", "images": [PNG]}
    elif model == "claude":
        source = {"type": "base64", "media_type": "image/png", "data": PNG}
        assert turn["content"] == [block("describe this picture"), {"type": "image", "source": source}]
    else:
        image = {"image": {"format": "png", "source": {"bytes": PNG}}}
        assert turn["content"] == [{"text": "describe this picture"}, image]


@pytest.mark.parametrize("model", ALL)
def test_image_https_url(model: str, client: openai.OpenAI, http: httpx.Client, stack: Stack) -> None:
    content: list[Any] = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
    ]
    messages: list[Any] = [{"role": "user", "content": content}]
    if model in ("gpt", "claude"):  # both APIs fetch a URL themselves
        completion = client.chat.completions.create(model=model, messages=messages)
        assert completion.choices[0].message.content == "Echo: what is this"
        turn = sent(stack, model)["messages"][-1]
        if model == "gpt":
            assert turn == messages[0]
        else:
            assert turn["content"][1] == {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}
        return
    # Ollama and Bedrock take inline bytes only, and the gateway fetches nothing: a clear 400, upstream not called.
    r = http.post(CHAT, json={"model": model, "messages": messages})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    validate("ErrorResponse", r.json())
    assert err["type"] == "invalid_request_error" and err["param"] == "messages"
    assert "data:image/" in err["message"] and "URL" in err["message"], err["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=messages, stream=True)
    assert chat_requests(stack, model) == []


# -- usage: client == upstream == ledger ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL)
def test_usage_seen_by_the_client_is_what_the_upstream_reported_and_is_recorded(
    model: str, client: openai.OpenAI, stack: Stack, gw: RunningGateway, tenant: TenantKey
) -> None:
    messages: list[Any] = [{"role": "system", "content": "Count carefully."}, *TWO_SYSTEMS[2:5], TWO_SYSTEMS[-1]]
    plain = client.chat.completions.create(model=model, messages=messages)
    assert plain.usage is not None
    p, c = reported(stack, model)
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens, plain.usage.total_tokens) == (p, c, p + c)
    assert (p, c) == (words(messages), 5), "the same conversation costs the same everywhere"

    with_usage = list(
        client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    last = with_usage[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == reported(stack, model) == (p, c)
    assert [ch for ch in with_usage if ch.usage is not None] == [last]

    without = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    assert all(ch.usage is None and ch.choices for ch in without)
    assert reported(stack, model) == (p, c)

    usage = admin_usage(gw, tenant)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (3, 3 * p, 3 * c)
    assert [(m["requests"], m["prompt_tokens"], m["completion_tokens"]) for m in usage["by_model"]] == [
        (3, 3 * p, 3 * c)
    ]
    rows = ledger(gw, tenant.id)
    assert sorted((r["stream"], r["prompt_tokens"], r["completion_tokens"]) for r in rows) == [
        (False, p, c),
        (True, p, c),
        (True, p, c),
    ]


def cached_messages(prefix: str) -> list[Any]:
    # `cache_control` on a content part: the extension OpenAI clients send for Anthropic prompt caching.
    part = {"type": "text", "text": prefix, "cache_control": {"type": "ephemeral"}}
    return [{"role": "user", "content": [part, {"type": "text", "text": "so what now"}]}]


@pytest.mark.parametrize("model", ["claude", "bedrock"])
def test_cache_reads_surface_as_cached_tokens(
    model: str, client: openai.OpenAI, stack: Stack, gw: RunningGateway, tenant: TenantKey
) -> None:
    prefix = f"a long shared policy document number {uuid.uuid4().hex} that every request repeats"
    cached = text.count_tokens(prefix)  # Anthropic: the prompt up to the marker; Bedrock: what the fake is told
    messages = cached_messages(prefix)
    total = words(messages)
    brk = stack.brk
    try:
        if model == "bedrock":  # the fake reports cache writes then reads as configured
            brk.cache_read_tokens, brk.cache_write_tokens = 0, cached
        first = client.chat.completions.create(model=model, messages=messages)
        if model == "bedrock":
            brk.cache_read_tokens, brk.cache_write_tokens = cached, 0
        second = client.chat.completions.create(model=model, messages=messages)
        streamed = list(
            client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
    finally:
        brk.cache_read_tokens = brk.cache_write_tokens = 0
    extra = 0 if model == "claude" else cached  # Bedrock's fake adds the configured counts beside inputTokens
    for resp, read in ((first, 0), (second, cached)):
        assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
        assert resp.usage.prompt_tokens == total + extra, "prompt_tokens counts cached tokens too (OpenAI's meaning)"
        assert resp.usage.prompt_tokens_details.cached_tokens == read
    usage = streamed[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (total + extra, cached)
    rows = sorted(ledger(gw, tenant.id), key=lambda r: (r["stream"], r["cached_prompt_tokens"]))
    assert [(r["prompt_tokens"], r["cached_prompt_tokens"], r["cache_write_tokens"]) for r in rows] == [
        (total + extra, 0, cached),
        (total + extra, cached, 0),
        (total + extra, cached, 0),
    ]


# -- streaming with the SDK's stream helper -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ALL)
def test_streaming_text_with_the_stream_helper(model: str, client: openai.OpenAI, stack: Stack) -> None:
    messages: list[Any] = [{"role": "user", "content": "stream these five words please"}]
    deltas: list[str] = []
    ids: set[str] = set()
    done: list[str] = []
    with client.chat.completions.stream(
        model=model, messages=messages, stream_options={"include_usage": True}
    ) as stream:
        for event in stream:
            if event.type == "chunk":
                ids.add(event.chunk.id)
            elif event.type == "content.delta":
                deltas.append(event.delta)
            elif event.type == "content.done":
                done.append(event.content)
        final = stream.get_final_completion()
    reply = "Echo: stream these five words please"
    assert "".join(deltas) == reply and len([d for d in deltas if d]) == 6, "forwarded piece by piece"
    assert done == [reply]
    assert len(ids) == 1 and final.id in ids
    assert final.choices[0].message.content == reply and final.choices[0].message.role == "assistant"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == reported(stack, model) == (5, 6)


# -- switching only `model` -------------------------------------------------------------------------------------


def projection(completion: Any) -> dict[str, Any]:
    """What an application reads from a chat completion, minus what legitimately differs (ids, model names)."""
    choice = completion.choices[0]
    calls = choice.message.tool_calls or []
    return {
        "object": completion.object,
        "n": len(completion.choices),
        "role": choice.message.role,
        "content": choice.message.content,
        "refusal": choice.message.refusal,
        "logprobs": choice.logprobs,
        "finish": choice.finish_reason,
        "calls": [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls],
        "usage": (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens),
        "cached": completion.usage.prompt_tokens_details.cached_tokens,
    }


def test_switching_only_the_model_gives_equivalent_answers(client: openai.OpenAI, gw: RunningGateway) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    asks: list[dict[str, Any]] = [
        {"messages": TWO_SYSTEMS},
        {"messages": [{"role": "user", "content": "one two three four"}], "max_completion_tokens": 3},
        {"messages": [{"role": "user", "content": "find cheap flights"}], "tools": tools},
    ]
    for ask in asks:
        answers = {m: projection(client.chat.completions.create(model=m, **ask)) for m in ALL}
        streams = {}
        for m in ALL:
            with client.chat.completions.stream(model=m, stream_options={"include_usage": True}, **ask) as s:
                for _ in s:  # the snapshot, not get_final_completion(): that one raises on finish "length"
                    pass
                streams[m] = projection(s.current_completion_snapshot)
        assert all(a == answers["gpt"] for a in answers.values()), answers
        assert all(s == answers["gpt"] for s in streams.values()), streams

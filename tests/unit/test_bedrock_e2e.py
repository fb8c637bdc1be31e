"""The Bedrock pieces together against FakeBedrock over real HTTP: BedrockAdapter encodes, SigV4Signer signs,
aiohttp sends the path exactly as signed, EventStreamParser frames, BedrockStreamDecoder / decode_chat translate.
The fake validates each Converse body like the service (roles, tool ids, toolConfig, ranges) and verifies every
signature, so a translation or signing mistake fails here."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from yarl import URL

from aigw.config.model import BedrockProvider
from aigw.errors import UpstreamError
from aigw.providers.base import ChatInput, EmbeddingsInput, StreamIdentity, UpstreamRequest
from aigw.providers.bedrock import BedrockAdapter
from aigw.providers.eventstream import EventStreamParser
from aigw.providers.sigv4 import SigV4Signer
from aigw.providers.transport import Timeouts, Upstream
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.embeddings import EmbeddingRequest
from aigw.schema.usage import Usage
from tests.fakes import faults, text
from tests.fakes.bedrock_fake import FakeBedrock
from tests.support import openapi

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
IDENT = StreamIdentity(id="chatcmpl-e2e", created=1_764_000_000)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    },
]


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as f:
        yield f


@pytest.fixture
def signer(fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SigV4Signer:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.secret_key)
    return SigV4Signer(fake.region)


ADAPTER = BedrockAdapter(default_max_tokens=1024)


def chat(messages: list[dict[str, Any]], **fields: Any) -> ChatInput:
    raw = {"model": "alias", "messages": messages, **fields}
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


async def send(fake: FakeBedrock, signer: SigV4Signer, up: UpstreamRequest) -> tuple[int, bytes, Any]:
    url = fake.url + up.path
    headers = signer.sign(up.method, url, {"user-agent": "aigw-test", **up.headers}, up.body)
    # encoded=True: aiohttp must not re-quote the signed path (%3A would go out as ':').
    target = URL(url, encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.request(up.method, target, data=up.body, headers=headers) as resp,
    ):
        return resp.status, await resp.read(), resp.headers


async def complete(
    fake: FakeBedrock, signer: SigV4Signer, messages: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    status, body, headers = await send(
        fake, signer, ADAPTER.encode_chat(chat(messages, **fields), model=MODEL, stream=False)
    )
    if status >= 400:
        raise ADAPTER.decode_error(status, body, headers)
    out: dict[str, Any] = orjson.loads(ADAPTER.decode_chat(body, model=MODEL, ident=IDENT).body)
    openapi.validate("CreateChatCompletionResponse", out)
    return out


async def stream(
    fake: FakeBedrock, signer: SigV4Signer, messages: list[dict[str, Any]], **fields: Any
) -> tuple[list[dict[str, Any]], Usage | None]:
    up = ADAPTER.encode_chat(chat(messages, **fields), model=MODEL, stream=True)
    url = fake.url + up.path
    headers = signer.sign(up.method, url, dict(up.headers), up.body)
    dec = ADAPTER.stream_decoder(model=MODEL, include_usage=True, ident=IDENT)
    parser, out = EventStreamParser(), list[bytes]()
    target = URL(url, encoded=True)
    async with aiohttp.ClientSession() as session, session.post(target, data=up.body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
        async for data in resp.content.iter_any():
            out += [c for ev in parser.feed(data) for c in dec.feed(ev)]
    out += [c for ev in parser.close() for c in dec.feed(ev)]
    out += dec.finish()
    chunks = [orjson.loads(c) for c in out]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    return chunks, dec.usage


HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello   there\nworld"}]


async def test_text(fake: FakeBedrock, signer: SigV4Signer) -> None:
    out = await complete(fake, signer, HELLO, temperature=1.7)  # clamped to 1: the fake rejects > 1
    assert out["choices"][0]["message"]["content"] == "Echo: hello there world"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 5 and out["usage"]["completion_tokens"] == 4
    assert fake.last_request.json["inferenceConfig"] == {"maxTokens": 1024, "temperature": 1.0}
    assert fake.last_request.json["system"] == [{"text": "be brief"}]


async def test_stream_matches_the_non_streamed_answer(fake: FakeBedrock, signer: SigV4Signer) -> None:
    plain = await complete(fake, signer, HELLO)
    chunks, usage = await stream(fake, signer, HELLO)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text_out = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text_out == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == plain["usage"]
    assert usage == Usage(prompt_tokens=5, completion_tokens=4)


async def test_stop_sequence_and_length(fake: FakeBedrock, signer: SigV4Signer) -> None:
    out = await complete(fake, signer, HELLO, stop=["there"])
    assert (out["choices"][0]["message"]["content"], out["choices"][0]["finish_reason"]) == ("Echo: hello ", "stop")
    out = await complete(fake, signer, HELLO, max_completion_tokens=2)
    assert (out["choices"][0]["message"]["content"], out["choices"][0]["finish_reason"]) == ("Echo: hello", "length")


async def test_tool_round_trip_and_multi_turn(fake: FakeBedrock, signer: SigV4Signer) -> None:
    ask = [{"role": "user", "content": "weather in Paris"}]
    first = await complete(fake, signer, ask, tools=TOOLS)
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    (call,) = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"weather in Paris"}'}
    history = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": call["id"], "content": "11 degrees"},
    ]
    second = await complete(fake, signer, history, tools=TOOLS)
    assert second["choices"][0]["message"]["content"] == "Echo: 11 degrees"
    # Tools dropped (or tool_choice "none") on the next turn: the placeholder toolConfig keeps Bedrock happy.
    third = await complete(
        fake, signer, [*history, {"role": "user", "content": "thanks"}], tools=TOOLS, tool_choice="none"
    )
    assert third["choices"][0]["message"]["content"] == "Echo: thanks"
    fourth = await complete(fake, signer, [*history, {"role": "user", "content": "bye"}])
    assert fourth["choices"][0]["message"]["content"] == "Echo: bye"


async def test_parallel_tool_calls_stream(fake: FakeBedrock, signer: SigV4Signer) -> None:
    chunks, usage = await stream(fake, signer, [{"role": "user", "content": "parallel please"}], tools=TOOLS)
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(tc["index"], tc["function"]["name"]) for tc in calls if "id" in tc] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]
    args = {i: "".join(tc["function"]["arguments"] for tc in calls if tc["index"] == i) for i in (0, 1)}
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"city": "parallel please"}, 1: {"tz": "parallel please"}}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0


async def test_required_and_named_tool_choice(fake: FakeBedrock, signer: SigV4Signer) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    out = await complete(fake, signer, HELLO, tools=TOOLS, tool_choice=named)
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    assert fake.last_request.json["toolConfig"]["toolChoice"] == {"tool": {"name": "get_time"}}
    await complete(fake, signer, HELLO, tools=TOOLS, tool_choice="required")
    assert fake.last_request.json["toolConfig"]["toolChoice"] == {"any": {}}


async def test_image_input(fake: FakeBedrock, signer: SigV4Signer) -> None:
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    out = await complete(fake, signer, [{"role": "user", "content": content}])
    assert out["choices"][0]["message"]["content"] == "Echo: describe"


async def test_structured_output(fake: FakeBedrock, signer: SigV4Signer) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    out = await complete(fake, signer, [{"role": "user", "content": "two words"}], response_format=fmt)
    assert json.loads(out["choices"][0]["message"]["content"]) == {"name": "two words", "n": 2}


async def test_cache_usage_reaches_the_normalized_usage(fake: FakeBedrock, signer: SigV4Signer) -> None:
    fake.cache_read_tokens, fake.cache_write_tokens = 100, 20
    out = await complete(fake, signer, HELLO)
    assert out["usage"] == {
        "prompt_tokens": 125,
        "completion_tokens": 4,
        "total_tokens": 129,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    _, usage = await stream(fake, signer, HELLO)
    assert usage == Usage(prompt_tokens=125, completion_tokens=4, cached_prompt_tokens=100, cache_write_tokens=20)


async def test_upstream_errors(fake: FakeBedrock, signer: SigV4Signer) -> None:
    fake.inject(faults.status(429))
    with pytest.raises(UpstreamError) as ei:
        await complete(fake, signer, HELLO)
    assert (ei.value.upstream_status, ei.value.falls_back) == (429, True)
    assert ei.value.message == "Bedrock ThrottlingException: Too many requests, please wait before trying again."
    fake.inject(faults.status(503))
    with pytest.raises(UpstreamError) as ei:
        await complete(fake, signer, HELLO)
    assert (ei.value.upstream_status, ei.value.http_status) == (503, 502)
    # A request Bedrock refuses (here: a bad model id) goes back to the client as a 400.
    up = ADAPTER.encode_chat(chat(HELLO), model="anthropic.claude-nope-v9:0", stream=False)
    status, body, headers = await send(fake, signer, up)
    err = ADAPTER.decode_error(status, body, headers)
    assert (err.upstream_status, err.falls_back, err.http_status) == (400, False, 400)
    assert err.message == "Bedrock ValidationException: The provided model identifier is invalid."


async def test_mid_stream_exception(fake: FakeBedrock, signer: SigV4Signer) -> None:
    fake.inject(faults.error_after(3, "Model stream was interrupted."))
    with pytest.raises(UpstreamError) as ei:
        await stream(fake, signer, HELLO)
    assert (ei.value.upstream_status, ei.value.falls_back) == (502, True)
    assert "modelStreamErrorException: Model stream was interrupted." in ei.value.message


async def test_dropped_stream_is_not_a_clean_end(fake: FakeBedrock, signer: SigV4Signer) -> None:
    fake.inject(faults.drop_after(3))
    with pytest.raises((UpstreamError, aiohttp.ClientPayloadError)):
        await stream(fake, signer, HELLO)


def embed(inp: Any, **fields: Any) -> EmbeddingsInput:
    raw = {"model": "emb", "input": inp, **fields}
    return EmbeddingsInput(EmbeddingRequest(**raw), raw)


async def test_titan_embeddings_single_and_batched(fake: FakeBedrock, signer: SigV4Signer) -> None:
    titan = "amazon.titan-embed-text-v2:0"
    status, body, _ = await send(
        fake, signer, ADAPTER.encode_embeddings(embed("hi there", dimensions=256), model=titan)
    )
    assert status == 200
    result = ADAPTER.decode_embeddings(body, model=titan, encoding_format="float")
    out = orjson.loads(result.body)
    assert out["data"][0]["embedding"] == text.embedding_vector("hi there", 256)
    assert result.usage == Usage(prompt_tokens=2)
    # A list: one InvokeModel per text, sent concurrently, joined in order.
    texts = ["one", "two words", "three more words"]
    requests = ADAPTER.encode_embeddings_batch(embed(texts), model=titan)
    answers = await asyncio.gather(*(send(fake, signer, up) for up in requests))
    assert [a[0] for a in answers] == [200, 200, 200]
    joined = ADAPTER.decode_embeddings_batch([a[1] for a in answers], model=titan, encoding_format="base64")
    out = orjson.loads(joined.body)
    openapi.validate("CreateEmbeddingResponse", out, base64_embeddings=True)
    assert [d["embedding"] for d in out["data"]] == [
        base64.b64encode(text.float32_le_bytes(text.embedding_vector(t, 1024))).decode() for t in texts
    ]
    assert joined.usage == Usage(prompt_tokens=6)


async def test_cohere_embeddings(fake: FakeBedrock, signer: SigV4Signer) -> None:
    model = "cohere.embed-english-v3"
    status, body, _ = await send(fake, signer, ADAPTER.encode_embeddings(embed(["a b", "c"]), model=model))
    assert status == 200
    out = orjson.loads(ADAPTER.decode_embeddings(body, model=model, encoding_format="float").body)
    assert [d["embedding"] for d in out["data"]] == [
        text.embedding_vector("a b", 1024),
        text.embedding_vector("c", 1024),
    ]


def gateway_upstream(fake: FakeBedrock, signer: SigV4Signer, session: aiohttp.ClientSession) -> Upstream:
    cfg = BedrockProvider(name="bedrock", type="bedrock", region=fake.region, endpoint_url=fake.url)
    return Upstream(
        name=cfg.name,
        kind=cfg.type,
        base_url=cfg.endpoint_url or "",
        adapter=BedrockAdapter(default_max_tokens=cfg.default_max_tokens),
        signer=signer,
        timeouts=Timeouts(connect_s=5, total_s=10, first_byte_s=10, stream_s=30),
        session=session,
    )


async def test_through_the_gateway_transport(fake: FakeBedrock, signer: SigV4Signer) -> None:
    """The lead's Upstream (URL sent encoded, make_parser's AWS event-stream framing) with these pieces."""
    async with aiohttp.ClientSession() as session:
        upstream = gateway_upstream(fake, signer, session)
        completion = await upstream.chat(chat(HELLO), MODEL, IDENT)
        assert orjson.loads(completion.body)["choices"][0]["message"]["content"] == "Echo: hello there world"
        opened, first = await upstream.open_stream(chat(HELLO), MODEL, IDENT, include_usage=True)
        try:
            rest = [chunk async for batch in opened for chunk in batch]
        finally:
            await opened.aclose()
        chunks = [orjson.loads(c) for c in [*first, *rest]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Echo:"}
        assert chunks[-1]["usage"] == orjson.loads(completion.body)["usage"]
        assert opened.usage == completion.usage
        embedded = await upstream.embed(embed("hi there"), "amazon.titan-embed-text-v2:0", "float")
        assert embedded.usage == Usage(prompt_tokens=2)
        fake.inject(faults.status(429))
        with pytest.raises(UpstreamError) as ei:
            await upstream.open_stream(chat(HELLO), MODEL, IDENT, include_usage=False)
        assert (ei.value.upstream_status, ei.value.falls_back) == (429, True)

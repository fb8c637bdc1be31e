"""Fault injection and observation, checked through the official SDKs (what a gateway's upstream client sees)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar, cast

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.fakes import faults
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support import openapi

MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three four five"}]
OLLAMA_MSGS = [{"role": "user", "content": "one two three four five"}]
CHAT = "/v1/chat/completions"
T = TypeVar("T")


def drain(items: Iterable[T], into: list[T]) -> None:
    """Iterate into ``into`` so the items that arrived before an exception stay visible to the test."""
    for item in items:
        into.append(item)  # noqa: PERF402


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0) as c:
        yield c


@pytest.fixture
def oclient(fake_ollama: FakeOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=fake_ollama.url) as c:
        yield c


# -- OpenAI -------------------------------------------------------------------------------------------------------


def test_status_fault_maps_to_sdk_exceptions(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.status(429, retry_after="2"))
    fake_openai.inject(faults.status(500))
    fake_openai.inject(faults.status(503, "try later", code="overloaded"), times=2)
    with pytest.raises(openai.RateLimitError) as rl:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert rl.value.response.headers["retry-after"] == "2"
    assert rl.value.code == "rate_limit_exceeded" and rl.value.type == "requests"
    openapi.validate("ErrorResponse", rl.value.response.json())
    with pytest.raises(openai.InternalServerError) as ise:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    assert ise.value.status_code == 500 and ise.value.type == "server_error"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.embeddings.create(model="text-embedding-3-small", input="x")
        assert unavailable.value.status_code == 503
        assert unavailable.value.body == {
            "message": "try later",
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }
    assert len(fake_openai.faults) == 0
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSGS).choices[0].finish_reason == "stop"
    assert [r.status for r in fake_openai.requests] == [429, 500, 503, 503, 200]


def test_fault_path_filter_and_raw_body(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.raw(502, b"<html>bad gateway</html>", "text/html"), path="/v1/embeddings")
    client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)  # not consumed by another path
    assert len(fake_openai.faults) == 1
    with pytest.raises(openai.InternalServerError) as err:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert err.value.status_code == 502 and err.value.response.text == "<html>bad gateway</html>"


def test_drop_mid_stream_raises_connection_error(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.drop_after(2))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        drain(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True), got)
    assert len(got) == 2
    rec = fake_openai.last_request
    assert rec.wait_done()
    assert (rec.outcome, rec.chunks_sent, rec.streamed) == ("dropped", 2, True)
    assert fake_openai.client_disconnects == 0

    fake_openai.inject(faults.drop_after(8))  # every chunk (role, 6 words, finish) but no [DONE]
    got.clear()
    with pytest.raises(openai.APIConnectionError):
        drain(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True), got)
    assert len(got) == 8 and got[-1].choices[0].finish_reason == "stop"

    fake_openai.inject(faults.drop_after(0))  # non-streaming: the connection dies before any response
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)


def test_error_event_mid_stream(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.error_after(3, "The model is overloaded"))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as err:
        drain(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True), got)
    assert len(got) == 3
    assert err.value.message == "The model is overloaded"
    assert fake_openai.last_request.wait_done(5) and fake_openai.last_request.outcome == "completed"

    fake_openai.inject(faults.error_after(0))
    with httpx.stream("POST", fake_openai.base_url + "/chat/completions", timeout=10,
                      json={"model": "gpt-4o-mini", "messages": MSGS, "stream": True},
                      headers={"Authorization": f"Bearer {fake_openai.api_key}"}) as resp:  # fmt: skip
        raw = resp.read()
    assert raw.startswith(b'data: {"error":{"message":') and raw.endswith(b"}}\n\n") and b"[DONE]" not in raw


def test_hang_until_client_times_out_counts_a_disconnect(fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.hang())
    c = openai.OpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0, timeout=0.3)
    with c, pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert fake_openai.wait_for_disconnects(1, timeout=5)
    rec = fake_openai.last_request
    assert rec.wait_done() and rec.client_disconnected and rec.status is None


def test_hang_for_a_while_then_answer(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.hang(0.2))
    started = time.monotonic()
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert time.monotonic() - started >= 0.2
    assert r.choices[0].message.content == "Echo: one two three four five"


def test_client_closing_a_stream_early_is_detected(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.stall_after(2))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    it = iter(stream)
    next(it), next(it)
    assert fake_openai.client_disconnects == 0
    stream.close()
    assert fake_openai.wait_for_disconnects(1, timeout=5)
    rec = fake_openai.last_request
    assert rec.wait_done() and (rec.outcome, rec.chunks_sent) == ("client_disconnected", 2)


async def test_async_client_closing_a_stream_early_is_detected(fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.slow(0.05))  # a live, slowly progressing stream rather than a stalled one
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, max_retries=0) as c:
        long: list[ChatCompletionMessageParam] = [{"role": "user", "content": " ".join(["word"] * 200)}]
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=long, stream=True)
        got = 0
        async for _chunk in stream:
            got += 1
            if got == 3:
                break
        await stream.close()
        assert await fake_openai.wait_for_disconnects_async(1, timeout=5)
    rec = fake_openai.last_request
    assert rec.client_disconnected and 3 <= rec.chunks_sent < 200


def test_slow_chunks(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.inject(faults.slow(0.05))
    started = time.monotonic()
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
    assert len(chunks) == 8  # role, 6 words, finish
    assert time.monotonic() - started >= 0.05 * 8
    assert fake_openai.last_request.wait_done(5) and fake_openai.last_request.outcome == "completed"


async def test_stop_releases_a_parked_request() -> None:
    fake = FakeOpenAI().start()
    try:
        fake.inject(faults.hang())
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as c:
            call = asyncio.ensure_future(c.chat.completions.create(model="gpt-4o-mini", messages=MSGS))
            assert await fake.wait_for_requests_async(1)
            started = time.monotonic()
            await asyncio.to_thread(fake.stop)
            assert time.monotonic() - started < 3
            with pytest.raises(openai.APIConnectionError):
                await call
    finally:
        fake.stop()
    rec = fake.last_request
    assert rec.outcome == "server_shutdown" and fake.client_disconnects == 0


def test_observation_and_reset(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True).close()
    client.models.list()
    assert fake_openai.wait_for_requests(2)
    assert [r.path for r in fake_openai.requests] == [CHAT, "/v1/models"]
    assert fake_openai.requests_to(CHAT)[0].json["stream"] is True
    fake_openai.inject(faults.hang())
    fake_openai.reset()
    assert (fake_openai.requests, len(fake_openai.faults), fake_openai.client_disconnects) == ([], 0, 0)


# -- Ollama -------------------------------------------------------------------------------------------------------


def test_ollama_status_fault(oclient: ollama.Client, fake_ollama: FakeOllama) -> None:
    fake_ollama.inject(faults.status(503, "server busy, please try again"), path="/api/chat")
    with pytest.raises(ollama.ResponseError) as err:
        oclient.chat(model="llama3.2", messages=OLLAMA_MSGS, stream=True).__next__()
    assert (err.value.status_code, err.value.error) == (503, "server busy, please try again")
    fake_ollama.inject(faults.status(500))
    with pytest.raises(ollama.ResponseError) as err:
        oclient.embed(model="nomic-embed-text", input="x")
    assert (err.value.status_code, err.value.error) == (500, "the model failed to generate a response")


def test_ollama_drop_mid_stream(oclient: ollama.Client, fake_ollama: FakeOllama) -> None:
    fake_ollama.inject(faults.drop_after(2))
    parts: list[ollama.ChatResponse] = []
    with pytest.raises(httpx.RemoteProtocolError):  # the ollama SDK does not wrap transport errors
        drain(oclient.chat(model="llama3.2", messages=OLLAMA_MSGS, stream=True), parts)
    assert [p.message.content for p in parts] == ["Echo:", " one"]
    assert fake_ollama.last_request.wait_done(5) and fake_ollama.last_request.outcome == "dropped"


def test_ollama_error_line_mid_stream(oclient: ollama.Client, fake_ollama: FakeOllama) -> None:
    fake_ollama.inject(faults.error_after(2, "an error was encountered while running the model"))
    parts: list[ollama.ChatResponse] = []
    with pytest.raises(ollama.ResponseError) as err:
        drain(oclient.chat(model="llama3.2", messages=OLLAMA_MSGS, stream=True), parts)
    assert len(parts) == 2 and err.value.error == "an error was encountered while running the model"
    fake_ollama.inject(faults.error_after(1, "boom"))
    raw = httpx.post(fake_ollama.url + "/api/chat", json={"model": "llama3.2", "messages": OLLAMA_MSGS})
    lines = raw.text.splitlines()
    assert len(lines) == 2 and lines[-1] == '{"error":"boom"}'
    fake_ollama.inject(faults.error_after(1, "boom"))
    plain = httpx.post(fake_ollama.url + "/api/chat", json={"model": "llama3.2", "messages": OLLAMA_MSGS,
                                                            "stream": False})  # fmt: skip
    assert (plain.status_code, plain.json()) == (500, {"error": "boom"})


def test_ollama_early_close_and_timeout_are_disconnects(oclient: ollama.Client, fake_ollama: FakeOllama) -> None:
    fake_ollama.inject(faults.stall_after(1))
    # typed as an Iterator, it is a generator: closing it closes the HTTP response
    stream = cast(Generator[ollama.ChatResponse], oclient.chat(model="llama3.2", messages=OLLAMA_MSGS, stream=True))
    assert next(stream).message.content == "Echo:"
    stream.close()
    assert fake_ollama.wait_for_disconnects(1, timeout=5)

    fake_ollama.inject(faults.hang())
    with ollama.Client(host=fake_ollama.url, timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.chat(model="llama3.2", messages=OLLAMA_MSGS, stream=False)
    assert fake_ollama.wait_for_disconnects(2, timeout=5)
    assert [r.outcome for r in fake_ollama.requests] == ["client_disconnected", "client_disconnected"]


async def test_ollama_async_early_close(fake_ollama: FakeOllama) -> None:
    fake_ollama.inject(faults.stall_after(2))
    async with ollama.AsyncClient(host=fake_ollama.url) as client:
        stream = await client.chat(model="llama3.2", messages=OLLAMA_MSGS, stream=True)
        seen = []
        async for part in stream:
            seen.append(part.message.content)
            if len(seen) == 2:
                break
        assert seen == ["Echo:", " one"]
        await stream.aclose()
        assert await fake_ollama.wait_for_disconnects_async(1, timeout=5)
    assert fake_ollama.last_request.chunks_sent == 2

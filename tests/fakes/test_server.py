"""The harness itself: real sockets, a given or free port, clean start/stop from sync and async tests."""

from __future__ import annotations

import socket

import aiohttp
import httpx
import openai
import pytest
from aiohttp import web

from tests.fakes import text
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import RunningServer


def hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.query.get('name', 'world')}")

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_free_port_and_clean_stop() -> None:
    server = RunningServer(hello_app())
    with pytest.raises(RuntimeError):
        _ = server.url  # not started yet
    with server:
        assert server.running and server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url + "/hello", params={"name": "sync"}).text == "hello sync"
        port = server.port
    assert not server.running
    server.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/hello")


def test_given_port_and_restart() -> None:
    port = free_port()
    server = RunningServer(hello_app(), port=port)
    with server:
        assert server.port == port
        assert httpx.get(f"http://127.0.0.1:{port}/hello").text == "hello world"
    with RunningServer(hello_app(), port=port) as again:  # the port is free again after a clean stop
        assert httpx.get(again.url + "/hello").status_code == 200


def test_port_in_use_fails_loudly() -> None:
    with RunningServer(hello_app()) as first, pytest.raises(RuntimeError, match="failed to start"):
        RunningServer(hello_app(), port=first.port).start()


async def test_usable_from_an_async_test() -> None:
    with RunningServer(hello_app()) as server:
        async with aiohttp.ClientSession() as session, session.get(server.url + "/hello?name=async") as resp:
            assert await resp.text() == "hello async"

        async def on_server_loop() -> str:
            return "ran"

        assert server.call(on_server_loop()) == "ran"


def test_text_helpers_round_trip() -> None:
    content = "Echo:  spaced\tout text "
    assert "".join(text.split_pieces(content)) == content
    assert text.split_pieces("") == []
    reply = text.limit_reply(text.echo_text("a b c d"), stop=[" c"], max_tokens=10)
    assert (reply.content, reply.finish) == ("Echo: a b", "stop")
    reply = text.limit_reply(text.echo_text("a b c d"), max_tokens=2)
    assert (reply.content, reply.finish, reply.tokens) == ("Echo: a", "length", 2)
    vec = text.embedding_vector("x", 32)
    assert vec == text.embedding_vector("x", 32) != text.embedding_vector("y", 32)
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-6
    assert all(text.to_float32(v) == v for v in vec)


def test_fake_restarts_on_the_same_port() -> None:
    fake = FakeOpenAI().start()
    try:
        with openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as client:
            port = fake.port
            client.models.list()
            fake.stop()
            with pytest.raises(openai.APIConnectionError):  # the upstream is down: connection refused
                client.models.list()
            fake.start()
            assert fake.port == port
            client.models.list()
    finally:
        fake.stop()
    assert [r.status for r in fake.requests] == [200, 200]

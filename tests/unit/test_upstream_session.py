"""The process's upstream HTTP (the lean pool and the aiohttp session), shared by every tenant's requests."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from aigw.config.model import OpenAIProvider
from aigw.errors import UpstreamError
from aigw.providers import build_upstream
from aigw.providers.base import ChatInput, StreamIdentity
from aigw.providers.transport import close_clients, close_session, make_clients, make_session
from aigw.schema.chat import ChatCompletionRequest


async def test_cookies_an_upstream_sets_are_not_sent_on_later_requests() -> None:
    """A cookie set in reply to one tenant's request must not ride along on the next tenant's."""
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="{}")
        response.set_cookie("__cf_bm", "tenant-a-session", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with TestServer(app) as server:
        session = make_session()
        try:
            for _ in range(2):
                # A host name: aiohttp's jar keeps no cookies for IP addresses, so a test by IP would prove nothing.
                url = server.make_url("/v1/chat/completions").with_host("localhost")
                async with session.post(url, data=b"{}") as resp:
                    assert resp.status == 200 and "__cf_bm" in resp.cookies
        finally:
            await close_session(session)
    assert seen == [None, None]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_is_an_error_not_followed(stream: bool) -> None:
    """A POST redirected elsewhere (or turned into a GET) is a configuration problem: reported, never followed."""
    followed: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/elsewhere/v1/chat/completions"})

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.method)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", moved)
    app.router.add_route("*", "/elsewhere/v1/chat/completions", elsewhere)
    async with TestServer(app) as server:
        clients = make_clients()
        try:
            base_url = str(server.make_url("/v1"))
            cfg = OpenAIProvider(name="moved", type="openai", base_url=base_url, api_key=SecretStr("sk-x"))
            upstream = build_upstream(cfg, clients)
            raw = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            chat = ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)
            ident = StreamIdentity(id="chatcmpl-x", created=1)
            with pytest.raises(UpstreamError, match=r"redirect \(HTTP 307\)") as caught:
                if stream:
                    await upstream.open_stream(chat, "m", ident, include_usage=False)
                else:
                    await upstream.chat(chat, "m", ident)
            assert caught.value.http_status == 502 and caught.value.falls_back
        finally:
            await close_clients(clients)
    assert followed == []

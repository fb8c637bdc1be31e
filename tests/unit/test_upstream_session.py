"""The shared upstream session: one per process, used for every tenant's requests."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from aigw.providers.transport import close_session, make_session


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

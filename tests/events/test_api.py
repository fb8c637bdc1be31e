"""``GET /admin/events``: admin-only, the service's status, or a disabled marker when no sinks are configured."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.routing import Route

from aigw.api.errors import handle_gateway_error
from aigw.api.events import events_status
from aigw.errors import GatewayError
from aigw.events import EventService
from tests.events.helpers import settings
from tests.support.gateway import ADMIN_KEY


def _app(events: EventService | None, db_url: str) -> Starlette:
    app = Starlette(
        routes=[Route("/admin/events", events_status, methods=["GET"])],
        exception_handlers={GatewayError: handle_gateway_error},
    )
    # Only what the handler reads from the real Services.
    app.state.aigw = SimpleNamespace(settings=settings(db_url), events=events)
    return app


async def _get(app: Starlette, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/admin/events", headers=headers)


async def test_needs_the_admin_key(sqlite_url: str) -> None:
    app = _app(None, sqlite_url)
    assert (await _get(app, None)).status_code == 401
    assert (await _get(app, "gw-sk-not-admin")).status_code == 401


async def test_disabled_without_sinks(sqlite_url: str) -> None:
    resp = await _get(_app(None, sqlite_url), ADMIN_KEY)
    assert resp.status_code == 200
    assert resp.json()["enabled"] is False and resp.json()["sinks"] == []


async def test_shows_each_sinks_status(db_engine: AsyncEngine, db_url: str) -> None:
    service = EventService(settings(db_url, {"type": "webhook", "url": "http://127.0.0.1:9/x", "name": "h"}), db_engine)
    await service.refresh()
    body = (await _get(_app(service, db_url), ADMIN_KEY)).json()
    assert body["enabled"] is True and body["event_type"] == "aigw.usage.v1"
    (sink,) = body["sinks"]
    assert sink["name"] == "h" and sink["type"] == "webhook" and sink["backlog"] == 0 and sink["dropped"] == 0

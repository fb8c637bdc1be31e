"""When a request's ledger row, metrics and access line are booked (gateway._record / _book): a non-streaming
response is handed to the server first (the client does not wait for the booking), and the row is still in the
recorder before the next request on the connection is read. A stream's row is booked as it ends."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aigw.store.usage import UsageRecord
from tests.api.conftest import TenantKey
from tests.support.gateway import RunningGateway
from tests.support.ledger import ledger

CHAT = "/v1/chat/completions"


class _Watch:
    """Wraps the server's ASGI app and the recorder: for each row booked, whether its response had been handed to
    the server by then, and how many rows the recorder held when each request arrived."""

    def __init__(self, gw: RunningGateway) -> None:
        self.finished: set[str] = set()  # request ids whose last response message has been sent
        self.booked: list[tuple[str, bool]] = []  # (request id, response already sent?)
        self.seen_on_arrival: list[int] = []
        self._app = gw.server.config.loaded_app
        self._record = gw.services.recorder.record

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        self.seen_on_arrival.append(len(self.booked))
        rid: list[str] = []

        async def watched_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                rid.extend(v.decode() for k, v in message["headers"] if k == b"x-request-id")
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.finished.update(rid)

        await self._app(scope, receive, watched_send)

    def record(self, rec: UsageRecord) -> None:
        self.booked.append((rec.request_id, rec.request_id in self.finished))
        self._record(rec)


@pytest.fixture
def watch(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> _Watch:
    w = _Watch(gw)
    # Read by each new connection's protocol: the test's clients open theirs after this.
    monkeypatch.setattr(gw.server.config, "loaded_app", w.app)
    monkeypatch.setattr(gw.services.recorder, "record", w.record)
    return w


def test_a_response_goes_out_before_its_row_is_booked_and_the_row_before_the_next_request(
    gw: RunningGateway, tenant: TenantKey, watch: _Watch
) -> None:
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant.key}"}, timeout=10) as c:
        first = c.post(CHAT, json=body)
        second = c.post(CHAT, json=body)  # same connection: read after the first row was booked
        refused = c.post(CHAT, json={**body, "model": "no-such-model"})  # an error response is booked alike
        assert c.get("/healthz").status_code == 200  # read after the last row was booked (no race with this thread)
    assert [first.status_code, second.status_code, refused.status_code] == [200, 200, 404]
    ids = [r.headers["x-request-id"] for r in (first, second, refused)]
    assert watch.booked == [(i, True) for i in ids]
    assert watch.seen_on_arrival == [0, 1, 2, 3]
    rows = sorted(ledger(gw, tenant.id), key=lambda row: ids.index(row["request_id"]))
    assert [row["status"] for row in rows] == [200, 200, 404]
    # The latency is the request's own, taken when it finished, not when its row was booked later.
    assert all(0 < row["latency_ms"] < 10_000 for row in rows)


def test_a_streams_row_is_booked_as_it_ends(gw: RunningGateway, tenant: TenantKey, watch: _Watch) -> None:
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant.key}"}, timeout=10) as c:
        r = c.post(CHAT, json=body)
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        c.get("/healthz")
    assert watch.booked == [(r.headers["x-request-id"], True)]
    assert watch.seen_on_arrival == [0, 1]

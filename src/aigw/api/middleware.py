"""Pure ASGI middleware (no per-request objects beyond a closure): the request id on every response."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw.api.errors import error_response, handle_unexpected
from aigw.errors import GatewayError
from aigw.ids import hex_id
from aigw.telemetry.tracing import Tracing, set_server_route, set_server_status

REQUEST_ID_KEY = "aigw.request_id"
ROUTE_KEY = "aigw.route"


def _route_template(scope: Scope) -> str | None:
    """The matched route's path template (Starlette's router puts the route in the scope), or the fast path's."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else scope.get(ROUTE_KEY)


_MAX_ID = 128


def _clean(value: bytes) -> str | None:
    # Echo a client's id only if it is short, printable ASCII: it lands in logs and in the usage ledger.
    if 0 < len(value) <= _MAX_ID and all(0x21 <= b <= 0x7E for b in value):
        return value.decode("ascii")
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = _clean(value)
                break
        if rid is None:
            rid = hex_id(16)
        scope[REQUEST_ID_KEY] = rid
        raw = rid.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class TracingMiddleware:
    """One SERVER span per HTTP request (continuing the client's ``traceparent``), around the whole exchange so a
    stream's span lasts as long as the stream. Only installed when tracing is configured."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        # Named by the method until routing has run: the raw path (ids, probes of unknown paths) would make span
        # names and http.route unbounded; the matched route's template replaces it when there is one.
        with self.tracing.server_span(method, None, scope["headers"], path=path) as span:
            if not span.is_recording():  # unsampled: nothing to set on the way out
                await self.app(scope, receive, send)
                return

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    set_server_route(span, method, _route_template(scope))
                    set_server_status(span, message["status"])
                await send(message)

            await self.app(scope, receive, send_with_status)


class ChatFastPath:
    """``POST /v1/chat/completions`` straight to its handler, past Starlette's router and exception middleware:
    the hottest route pays for none of the generic dispatch (about a tenth of the gateway's CPU per request in the
    bench profile). Errors are mapped by the same functions the exception handlers use (api/errors.py)."""

    def __init__(self, app: ASGIApp, handler: Callable[[Request], Awaitable[Response | ASGIApp]]) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = "/v1/chat/completions"  # no router ran: the route for the server span's name
        request = Request(scope, receive)
        response: Response | ASGIApp
        started = time.perf_counter()
        try:
            response = await self.handler(request)
        except GatewayError as err:
            response = error_response(err)
            if not err.metered:  # refused before the gateway knew the tenant (bad key, unreadable body)
                _count_unmetered(scope, err.http_status, time.perf_counter() - started)
        except Exception as exc:
            response = await handle_unexpected(request, exc)
        await response(scope, receive, send)


def _count_unmetered(scope: Scope, status: int, seconds: float) -> None:
    """A chat request refused before it had a tenant still shows in aigw_requests_total (tenant and model "")."""
    observer = scope["app"].state.aigw.gateway.observer
    if observer is not None:
        observer.metrics.request_done(
            tenant="",
            model="",
            provider=None,
            status=status,
            cache="bypass",
            stream=False,
            duration_s=seconds,
            overhead_s=seconds,
            cost_usd=None,
        )

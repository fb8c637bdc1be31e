"""The one place where the gateway's error tree becomes HTTP: status, OpenAI-shaped body, headers."""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aigw.errors import GatewayError, UpstreamError

log = logging.getLogger("aigw.api")


def error_payload(err: GatewayError) -> dict[str, object]:
    return {"error": {"message": err.message, "type": err.error_type, "param": err.param, "code": err.error_code}}


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps(error_payload(err))


def error_headers(err: GatewayError) -> dict[str, str]:
    headers = dict(err.headers)
    if isinstance(err, UpstreamError):
        if err.provider:
            headers.setdefault("x-aigw-provider", err.provider)
        # An upstream's wait hint reaches the client: a passed-through request error's, or the shortest one when
        # every target of the chain was throttled (AllTargetsFailed).
        if err.retry_after is not None:
            headers.setdefault("retry-after", str(max(1, round(err.retry_after))))
    return headers


def error_response(err: GatewayError) -> Response:
    return Response(error_body(err), err.http_status, error_headers(err), media_type="application/json")


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # A bug, not bad input: log the type and location only (a message could echo request content).
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    body = {"error": {"message": "internal error", "type": "api_error", "param": None, "code": "internal_error"}}
    return Response(orjson.dumps(body), 500, media_type="application/json")

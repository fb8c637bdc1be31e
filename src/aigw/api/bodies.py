"""Reading and validating request bodies at the edge: size limit, JSON, then the typed view (msgspec)."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
import orjson
from starlette.requests import Request

from aigw.errors import BodyTooLarge, InvalidRequest

T = TypeVar("T")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(f"Request body is larger than the limit of {limit} bytes")
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header") from None
    # Straight from the ASGI receive channel: Request.stream()'s async generator costs more than the body is worth.
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise InvalidRequest("The client disconnected while sending the body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"Request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    return parse_json_object(await read_body(request, limit))


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object")
    try:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 levels with a JSONDecodeError.
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return data


def typed(data: dict[str, Any], cls: type[T]) -> T:
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).partition(" - at `$")
        path = where.rstrip("`").lstrip(".")
        missing = _MISSING.search(text)
        if missing:  # "Object missing required field `x`": the param is the missing field itself
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        raise InvalidRequest(f"Invalid request: {text}", param=path or None) from None


_MISSING = re.compile(r"missing required field `([^`]+)`")

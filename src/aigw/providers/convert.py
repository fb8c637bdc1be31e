"""Small conversions that several translators make the same way (pure: no I/O, no clock).

Request side: data URIs, response_format schemas, tool-call arguments. Answer side: JSON bodies, tool-call
arguments and base64 embeddings.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from aigw.errors import InvalidRequest, UpstreamError
from aigw.schema import chat as oa
from aigw.schema.embeddings import Embedding


def data_uri(url: str) -> tuple[str, str] | None:
    """``(media type, base64 payload)`` of a ``data:<type>;base64,<payload>`` URI, else None. The media type is
    lower-cased and keeps any parameters (``image/png;name=x``); either part may be empty."""
    head, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and head.endswith(";base64")):
        return None
    return head[len("data:") : -len(";base64")].lower(), data


def json_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema object of a ``json_schema`` response_format (``json_schema.schema``), if it is one."""
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def arguments_object(call: oa.ToolCall) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` (a JSON string) as the JSON object other APIs want; a 400 otherwise."""
    raw = call.function.arguments
    try:
        args = orjson.loads(raw) if raw.strip() else {}  # some clients send "" for a no-argument call
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(f"tool call {call.id}: function.arguments must be a JSON object string", param="messages")
    return args


def json_object(body: bytes, subject: str) -> dict[str, Any]:
    """An upstream body that must be a JSON object; else a 502 saying ``<subject> that is not JSON`` (or not an
    object), e.g. ``json_object(body, "Ollama sent a body")``."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{subject} that is not JSON", upstream_status=502) from None
    if not isinstance(parsed, dict):
        raise UpstreamError(f"{subject} that is not a JSON object", upstream_status=502)
    return parsed


def arguments_json(value: Any) -> str:
    """A tool call's input (a JSON document; absent means no arguments) as OpenAI's ``arguments`` string."""
    return orjson.dumps(value if value is not None else {}).decode()


def embedding(index: int, vector: list[float], encoding_format: str, *, provider: str) -> Embedding:
    """One OpenAI embedding item. For ``base64``: little-endian float32, as openai-python decodes it
    (``array("f", b64decode(data))`` on every platform it runs on); upstream vectors are float32, so nothing is lost.
    """
    if encoding_format != "base64":
        return Embedding(index=index, embedding=vector)
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except struct.error:
        raise UpstreamError(f"{provider} sent a non-numeric embedding", upstream_status=502) from None
    return Embedding(index=index, embedding=base64.b64encode(packed).decode("ascii"))

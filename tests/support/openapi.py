"""Validate wire bodies against the official OpenAI OpenAPI schemas (``tests/data/openai-openapi-subset.yaml``).

    from tests.support import openapi
    openapi.validate("CreateChatCompletionResponse", body)          # raises SchemaError with a readable message
    chunks = openapi.validate_sse_stream(raw_bytes)                  # framing + every chunk; returns the chunks
    openapi.validate("CreateEmbeddingResponse", body, base64_embeddings=True)

The spec still carries OpenAPI-3.0 ``nullable: true`` in places; JSON Schema has no such keyword (it would be
ignored and ``null`` rejected), so at load time every ``{…, nullable: true}`` becomes
``{"anyOf": [{…}, {"type": "null"}]}``. Validation is JSON Schema Draft 2020-12, ``$ref``s resolving inside the
document through a ``referencing`` registry.

``Embedding.embedding`` is declared an array of numbers, but with ``encoding_format: "base64"`` the API sends a
base64 string of little-endian float32s instead (the official SDK asks for base64 by default and decodes it), so
``base64_embeddings=True`` validates against a variant whose ``embedding`` is that string.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).parents[1] / "data" / "openai-openapi-subset.yaml"
_BASE_URI = "urn:openai-openapi-subset"


class SchemaError(AssertionError):
    """A body does not match the spec; the message names the schema, the JSON path and the failing rule."""


def _rewrite_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite_nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _document(base64_embeddings: bool) -> dict[str, Any]:
    raw = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    doc: dict[str, Any] = _rewrite_nullable(raw)
    if base64_embeddings:
        doc = copy.deepcopy(doc)
        props = doc["components"]["schemas"]["Embedding"]["properties"]
        props["embedding"] = {"type": "string", "contentEncoding": "base64", "minLength": 1}
    return doc


@functools.cache
def _validator(schema_name: str, base64_embeddings: bool) -> Any:
    doc = _document(base64_embeddings)
    if schema_name not in doc["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_PATH.name}")
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource)
    schema = {"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=registry)


def schema_names() -> list[str]:
    return sorted(_document(False)["components"]["schemas"])


def validate(schema_name: str, instance: object, *, base64_embeddings: bool = False) -> None:
    """Raise :class:`SchemaError` unless ``instance`` matches ``#/components/schemas/<schema_name>``."""
    validator = _validator(schema_name, base64_embeddings)
    error = best_match(validator.iter_errors(instance))
    if error is None:
        if base64_embeddings:
            _check_base64_embeddings(instance)
        return
    where = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
    rule = "/".join(str(p) for p in error.absolute_schema_path)
    shown = json.dumps(error.instance, default=str)
    if len(shown) > 300:
        shown = shown[:300] + "…"
    raise SchemaError(f"{schema_name}: at {where}: {error.message}\n  rule: {rule}\n  value: {shown}")


def _check_base64_embeddings(instance: object) -> None:
    """The string must decode to a whole number of float32s (what the SDK's ``np.frombuffer``/array('f') expects)."""
    for i, item in enumerate(instance.get("data", []) if isinstance(instance, dict) else []):
        try:
            raw = base64.b64decode(item["embedding"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise SchemaError(f"CreateEmbeddingResponse: data[{i}].embedding is not base64: {e}") from e
        if not raw or len(raw) % 4:
            raise SchemaError(f"CreateEmbeddingResponse: data[{i}].embedding decodes to {len(raw)} bytes, not float32s")


def validate_sse_stream(raw: bytes, schema_name: str = "CreateChatCompletionStreamResponse") -> list[dict[str, Any]]:
    """Check OpenAI's SSE framing and return the parsed chunks.

    Framing, as the API sends it: every event is one ``data: <json>`` line followed by a blank line (``\\n\\n``),
    no other fields or comments, and the stream ends with exactly one ``data: [DONE]`` event. Each JSON chunk is
    validated against ``schema_name``.
    """
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(f"SSE body is not UTF-8: {e}") from e
    if not body.endswith("\n\n"):
        raise SchemaError(f"SSE body does not end with a blank line: …{body[-80:]!r}")
    events = body[:-2].split("\n\n")
    chunks: list[dict[str, Any]] = []
    for n, event in enumerate(events):
        if "\n" in event or "\r" in event:
            raise SchemaError(f"SSE event {n} spans several lines: {event[:200]!r}")
        if not event.startswith("data: "):
            raise SchemaError(f"SSE event {n} is not a 'data: ' line: {event[:200]!r}")
        data = event[len("data: ") :]
        if data == "[DONE]":
            if n != len(events) - 1:
                raise SchemaError(f"'data: [DONE]' is event {n} of {len(events)}, not the last")
            break
        try:
            chunk = json.loads(data)
        except ValueError as e:
            raise SchemaError(f"SSE event {n} is not JSON: {data[:200]!r}") from e
        try:
            validate(schema_name, chunk)
        except SchemaError as e:
            raise SchemaError(f"SSE event {n}: {e}") from None
        chunks.append(chunk)
    else:
        raise SchemaError("SSE stream does not end with 'data: [DONE]'")
    return chunks

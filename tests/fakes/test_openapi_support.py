"""tests/support/openapi.py rejects what the spec rejects (so a passing validation means something)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from tests.support import openapi


def chunk(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}],
    }
    return base | overrides


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def test_nullable_fields_accept_null_and_values() -> None:
    openapi.validate("CreateChatCompletionStreamResponse", chunk(usage=None))
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    openapi.validate("CreateChatCompletionStreamResponse", chunk(choices=[], usage=usage))
    with pytest.raises(openapi.SchemaError, match="usage"):
        openapi.validate("CreateChatCompletionStreamResponse", chunk(usage={"prompt_tokens": 1}))
    bad_reason = chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "done"}])
    with pytest.raises(openapi.SchemaError, match="finish_reason"):
        openapi.validate("CreateChatCompletionStreamResponse", bad_reason)


def test_required_fields_and_readable_message() -> None:
    with pytest.raises(openapi.SchemaError) as err:
        openapi.validate("CreateChatCompletionStreamResponse", chunk(choices=[{"index": 0, "delta": {}}]))
    assert "CreateChatCompletionStreamResponse: at $['choices'][0]: 'finish_reason' is a required property" in str(
        err.value
    )
    with pytest.raises(KeyError):
        openapi.validate("NoSuchSchema", {})


def test_sse_framing() -> None:
    assert openapi.validate_sse_stream(sse(chunk(), b"[DONE]")) == [chunk()]
    with pytest.raises(openapi.SchemaError, match=r"does not end with 'data: \[DONE\]'"):
        openapi.validate_sse_stream(sse(chunk()))
    with pytest.raises(openapi.SchemaError, match="not the last"):
        openapi.validate_sse_stream(sse(b"[DONE]", b"[DONE]"))
    with pytest.raises(openapi.SchemaError, match="blank line"):
        openapi.validate_sse_stream(sse(chunk(), b"[DONE]")[:-1])
    with pytest.raises(openapi.SchemaError, match="not a 'data: ' line"):
        openapi.validate_sse_stream(b"event: x\n\n" + sse(b"[DONE]"))
    with pytest.raises(openapi.SchemaError, match="SSE event 0"):
        openapi.validate_sse_stream(sse({"error": {"message": "x"}}, b"[DONE]"))


def test_base64_embeddings_flag() -> None:
    vec = base64.b64encode(struct.pack("<2f", 0.5, -0.25)).decode()
    body: dict[str, Any] = {
        "object": "list",
        "model": "m",
        "data": [{"object": "embedding", "index": 0, "embedding": vec}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }
    openapi.validate("CreateEmbeddingResponse", body, base64_embeddings=True)
    with pytest.raises(openapi.SchemaError):
        openapi.validate("CreateEmbeddingResponse", body)  # the spec itself says: array of numbers
    body["data"][0]["embedding"] = base64.b64encode(b"abc").decode()  # 3 bytes: not float32s
    with pytest.raises(openapi.SchemaError, match="float32"):
        openapi.validate("CreateEmbeddingResponse", body, base64_embeddings=True)

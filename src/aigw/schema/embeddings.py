"""Embeddings request/response types."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct


class EmbeddingRequest(Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    # msgspec allows one array type per union: token-id inputs (list[int], list[list[int]]) are element unions.
    input: str | Annotated[list[str | int | list[int]], Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class EmbeddingUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class Embedding(Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingResponse(Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"

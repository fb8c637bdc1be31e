"""The provider seams (ADR 0002): pure body translation (adapters), wire signing (signers), stream framing.

Adapters do no I/O, read no clock and hold no globals: ids and timestamps come in as arguments, so every
translation is a pure function of its inputs and testable from recorded fixtures alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from aigw.errors import UpstreamError
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.embeddings import EmbeddingRequest
from aigw.schema.usage import Usage


class Framing(StrEnum):
    SSE = "sse"  # OpenAI, Anthropic
    NDJSON = "ndjson"  # Ollama's native API
    AWS_EVENTSTREAM = "aws-eventstream"  # Bedrock ConverseStream (binary frames)


@dataclass(frozen=True, slots=True)
class ChatInput:
    """A validated chat request: the typed view for translators, the raw mapping for pass-through."""

    request: ChatCompletionRequest
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EmbeddingsInput:
    request: EmbeddingRequest
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    path: str  # appended to the provider's base URL
    body: bytes  # provider-shaped JSON, serialized (signers sign these exact bytes)
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    """One decoded frame, whatever the framing."""

    type: str | None  # SSE `event:` / AWS `:event-type`; None for NDJSON lines and unnamed SSE events
    data: bytes


@dataclass(frozen=True, slots=True)
class Completion:
    body: bytes  # an OpenAI CreateChatCompletionResponse, serialized and served as-is
    usage: Usage | None
    response_model: str
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingsResult:
    body: bytes  # an OpenAI CreateEmbeddingResponse, serialized
    usage: Usage | None
    response_model: str


@dataclass(frozen=True, slots=True)
class StreamIdentity:
    """What a translated stream stamps on every chunk (OpenAI keeps one id/created for a whole stream)."""

    id: str
    created: int


class StreamDecoder(Protocol):
    """Created per request; holds that stream's state. Emits serialized OpenAI chunk JSON (without SSE framing).

    ``feed`` may emit 0..n chunks and raises UpstreamError for an error event. ``finish`` is called when the
    upstream body ends; it emits the final chunk(s) (the usage chunk only if the client asked for it) and raises
    UpstreamError if the upstream ended without its terminal event (a truncated stream is never a clean end).
    """

    @property
    def usage(self) -> Usage | None: ...

    @property
    def response_model(self) -> str | None: ...

    @property
    def finish_reason(self) -> str | None: ...

    def feed(self, event: UpstreamEvent) -> Sequence[bytes]: ...

    def finish(self) -> Sequence[bytes]: ...


class ChatAdapter(Protocol):
    """``single_tool_call``: the client sent ``parallel_tool_calls: false``; an adapter whose upstream cannot be told
    so keeps only the first tool call of a response (OpenAI and Anthropic enforce it upstream)."""

    @property
    def framing(self) -> Framing: ...

    def encode_chat(self, chat: ChatInput, *, model: str, stream: bool) -> UpstreamRequest: ...

    def decode_chat(
        self, body: bytes, *, model: str, ident: StreamIdentity, single_tool_call: bool = False
    ) -> Completion: ...

    def stream_decoder(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> StreamDecoder: ...

    def decode_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError: ...


class EmbeddingsAdapter(Protocol):
    def encode_embeddings(self, emb: EmbeddingsInput, *, model: str) -> UpstreamRequest: ...

    def decode_embeddings(self, body: bytes, *, model: str, encoding_format: str) -> EmbeddingsResult: ...


class BatchEmbeddingsAdapter(Protocol):
    """For APIs that embed one text per request (Bedrock Titan): the transport sends these concurrently."""

    def encode_embeddings_batch(self, emb: EmbeddingsInput, *, model: str) -> list[UpstreamRequest]: ...

    def decode_embeddings_batch(
        self, bodies: Sequence[bytes], *, model: str, encoding_format: str
    ) -> EmbeddingsResult: ...


class Signer(Protocol):
    """Adds authentication to one outgoing request (static headers, or SigV4 over the exact body bytes)."""

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]: ...


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after`` / ``retry-after-ms`` (numbers only; HTTP dates are rare upstream)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            return None
    return None

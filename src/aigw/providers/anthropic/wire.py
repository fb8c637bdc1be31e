"""The Anthropic Messages API shapes the gateway decodes, and Anthropic's vocabulary mapped onto OpenAI's.

Sources: github anthropics/anthropic-sdk-python ``src/anthropic/types`` (``Message``, ``Usage``,
``MessageDeltaUsage``, ``RawMessageStreamEvent`` and its members, ``StopReason``, ``shared/error_type.py``) and the
docs pages "Messages", "Streaming Messages" and "Errors". Only the fields the translation reads are declared:
msgspec skips unknown fields, so the fields Anthropic keeps adding (``stop_details``, ``container``,
``service_tier``…) never break decoding.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class Usage(Struct):
    # On `message_delta` every count but output_tokens may be absent ("omitted when not applicable", SDK
    # `accumulate_event`), so all are optional here and absent means "keep what message_start said".
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class ContentBlock(Struct):
    """A response content block. Deliberately not a tagged union: Anthropic adds block types (``thinking``,
    ``redacted_thinking``, ``server_tool_use``, ``web_search_tool_result``…) and an unknown one must be skipped,
    not fail the whole response."""

    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None


class Message(Struct):
    id: str
    model: str
    content: list[ContentBlock]
    usage: Usage = msgspec.field(default_factory=Usage)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    role: str = "assistant"


class ErrorDetail(Struct):
    type: str = "api_error"
    message: str = ""


class ErrorBody(Struct):
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` — error responses and ``error`` events."""

    error: ErrorDetail


# ---- stream events: a union tagged on `type` (the SSE `event:` name repeats it) ------------------------------


class MessageStart(Struct, tag="message_start", tag_field="type"):
    message: Message


class ContentBlockStart(Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: ContentBlock


class BlockDelta(Struct):
    # text_delta → text, input_json_delta → partial_json; thinking_delta, signature_delta and citations_delta
    # carry other fields and are ignored by the decoder.
    type: str
    text: str = ""
    partial_json: str = ""


class ContentBlockDelta(Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: BlockDelta


class ContentBlockStop(Struct, tag="content_block_stop", tag_field="type"):
    index: int


class MessageDeltaBody(Struct):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class MessageDelta(Struct, tag="message_delta", tag_field="type"):
    delta: MessageDeltaBody
    usage: Usage = msgspec.field(default_factory=Usage)


class MessageStop(Struct, tag="message_stop", tag_field="type"):
    pass


class Ping(Struct, tag="ping", tag_field="type"):
    pass


class ErrorEvent(Struct, tag="error", tag_field="type"):
    error: ErrorDetail


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)
# The SSE `event:` names decoded; any other name is skipped unread (the docs, "Other events": "we may occasionally
# add new event types, and your code should handle unknown event types gracefully").
STREAM_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)

decode_message = msgspec.json.Decoder(Message).decode
decode_error_body = msgspec.json.Decoder(ErrorBody).decode
decode_event = msgspec.json.Decoder(StreamEvent).decode


# ---- vocabulary ------------------------------------------------------------------------------------------

# docs "Errors": the HTTP status of each error type. An `error` event arrives inside a 200 stream, so its status
# is read from here; keeping the real one (529 rather than 502) keeps the gateway's fallback rule status-based.
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_status(error_type: str) -> int:
    """HTTP status for an Anthropic error type; 502 (the upstream misbehaved) for a type this table lacks."""
    return ERROR_STATUS.get(error_type, 502)


_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",  # OpenAI reports a matched stop sequence as "stop" too
    "max_tokens": "length",
    # The prompt plus output hit the model's context window: a length cut, not a natural end.
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",  # streaming classifiers stopped the answer (docs "Handling stop reasons")
}


def finish_reason(stop_reason: str | None) -> str:
    """Anthropic ``stop_reason`` → OpenAI ``finish_reason``.

    Everything else becomes ``stop``: ``pause_turn`` (a server-tool loop paused; the turn ended without a client
    tool call) has no OpenAI counterpart, and OpenAI's enum has no "unknown" a client could act on.
    """
    return _FINISH.get(stop_reason or "", "stop")

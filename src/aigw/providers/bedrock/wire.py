"""Bedrock Runtime wire shapes the gateway reads (Converse / ConverseStream responses, Titan and Cohere embeddings)
and the mappings of their vocabulary onto the gateway's (finish reasons, usage, exceptions).

Shapes follow the Bedrock Runtime API model (botocore ``data/bedrock-runtime/2023-09-30/service-2.json``): unknown
fields are ignored (ConverseStream pads every event payload with a random ``"p": "abcdef..."`` field; new content
block kinds appear over time), missing optional fields take their defaults.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from aigw.errors import UpstreamError, UpstreamTimeout
from aigw.schema.usage import Usage

# ---- Converse / ConverseStream ---------------------------------------------------------------------------------


class TokenUsage(Struct, rename="camel"):
    # "inputTokens" counts only the uncached input: cache reads and writes are reported beside it, and
    # totalTokens = input + output + cacheRead + cacheWrite (Bedrock user guide, "Prompt caching").
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0

    def normalized(self) -> Usage:
        # The gateway's prompt_tokens follows OpenAI: every input token, cached or not.
        read, write = self.cache_read_input_tokens, self.cache_write_input_tokens
        return Usage(
            prompt_tokens=self.input_tokens + read + write,
            completion_tokens=self.output_tokens,
            cached_prompt_tokens=read,
            cache_write_tokens=write,
        )


class ToolUse(Struct, rename="camel"):
    tool_use_id: str
    name: str
    input: Any = None


class ContentBlock(Struct, rename="camel"):
    text: str | None = None
    tool_use: ToolUse | None = None
    # reasoningContent, citationsContent, image... are read past: OpenAI's chat schema has no place for them.


class Message(Struct):
    content: list[ContentBlock] = []
    role: str = "assistant"


class Output(Struct):
    message: Message | None = None


class ConverseResponse(Struct, rename="camel"):
    output: Output
    stop_reason: str
    usage: TokenUsage | None = None


class MessageStart(Struct):
    role: str = "assistant"


class ToolUseStart(Struct, rename="camel"):
    tool_use_id: str
    name: str


class BlockStart(Struct, rename="camel"):
    tool_use: ToolUseStart | None = None


class ContentBlockStart(Struct, rename="camel"):
    content_block_index: int
    start: BlockStart


class ToolUseDelta(Struct):
    input: str = ""


class BlockDelta(Struct, rename="camel"):
    text: str | None = None
    tool_use: ToolUseDelta | None = None


class ContentBlockDelta(Struct, rename="camel"):
    content_block_index: int
    delta: BlockDelta


class ContentBlockStop(Struct, rename="camel"):
    content_block_index: int


class MessageStop(Struct, rename="camel"):
    stop_reason: str


class StreamMetadata(Struct):
    usage: TokenUsage | None = None


class ExceptionBody(Struct):
    message: str | None = None
    Message: str | None = None  # some AWS front ends capitalise it (botocore reads both)

    @property
    def text(self) -> str:
        return self.message or self.Message or ""


def decoder(kind: type[Any]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


# ---- finish reasons --------------------------------------------------------------------------------------------

# StopReason enum (service-2.json): end_turn | tool_use | max_tokens | stop_sequence | guardrail_intervened |
# content_filtered | malformed_model_output | malformed_tool_use | model_context_window_exceeded.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",  # the output was cut by the context window: a length cut
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def finish_reason(stop_reason: str, *, tool_calls: bool) -> str:
    """OpenAI's finish_reason; unknown values (and the malformed_* ones, after which the text is all there is)
    become "stop". A tool_use stop without any decoded call cannot claim "tool_calls"."""
    reason = _FINISH.get(stop_reason, "stop")
    if reason == "tool_calls" and not tool_calls:
        return "stop"
    return reason


# ---- errors ----------------------------------------------------------------------------------------------------

# The status each Bedrock exception stands for, keyed in lower case: HTTP errors name them in PascalCase
# (x-amzn-errortype: ThrottlingException:http://internal.amazon.com/coral/...), stream frames in camelCase
# (:exception-type: throttlingException). Statuses are the API model's httpStatusCode, except:
# * modelStreamErrorException (424 in the model: the model failed mid-stream) and ModelErrorException (424, "the
#   request failed when Amazon Bedrock processed it") are failures of the model, not of the request: 502, so the
#   gateway falls back instead of blaming the client;
# * ModelTimeoutException (408) becomes an UpstreamTimeout (504), as a timeout of our own would.
EXCEPTION_STATUS = {
    "validationexception": 400,
    "accessdeniedexception": 403,
    "resourcenotfoundexception": 404,
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "servicequotaexceededexception": 400,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
    "modelstreamerrorexception": 502,
    "modelerrorexception": 502,
    "modeltimeoutexception": 504,
}


def error_type(header: str | None, body: Any) -> str | None:
    """The exception name from ``x-amzn-errortype`` ("Name:namespace-uri"), else the body's ``__type``/``code``
    (``"com.amazon.coral.service#Name"`` form included)."""
    raw = header
    if not raw and isinstance(body, dict):
        cand = body.get("__type") or body.get("code")
        raw = cand if isinstance(cand, str) else None
    if not raw:
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip() or None


def exception_error(
    kind: str | None, message: str, *, status: int | None, retry_after: float | None = None
) -> UpstreamError:
    """One Bedrock exception (HTTP or in-stream) as a gateway error; ``status`` is the HTTP status if there was one."""
    name = kind or "UnknownError"
    mapped = EXCEPTION_STATUS.get(name.lower())
    text = f"Bedrock {name}: {message}" if message else f"Bedrock {name}"
    if mapped == 504:
        return UpstreamTimeout(text)
    if mapped != 502 and status is not None and status >= 400:
        mapped = status  # an HTTP error's own status is authoritative, except for the model failures above
    code = mapped or 502  # an exception frame of a type this table does not know: the upstream's fault
    upstream_type = "invalid_request_error" if code == 400 else None
    return UpstreamError(text, upstream_status=code, retry_after=retry_after, upstream_type=upstream_type)

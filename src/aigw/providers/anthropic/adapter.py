"""Anthropic: OpenAI Chat Completions ⇄ the Messages API (``POST /v1/messages``, SSE with named events).

Pure: no I/O, no clock, no randomness — ids and timestamps arrive in :class:`StreamIdentity`. The credential
(``x-api-key``) is the signer's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from aigw.errors import InvalidRequest, UpstreamError
from aigw.providers.anthropic import request as rq
from aigw.providers.anthropic import wire
from aigw.providers.anthropic.stream import AnthropicStreamDecoder, usage_from
from aigw.providers.base import (
    ChatInput,
    Completion,
    Framing,
    StreamDecoder,
    StreamIdentity,
    UpstreamRequest,
    parse_retry_after,
)
from aigw.providers.convert import arguments_json
from aigw.providers.output import completion
from aigw.schema import chat as oa

DEFAULT_VERSION = "2023-06-01"


def _tool_call(block: wire.ContentBlock) -> oa.ResponseToolCall:
    # `input` is a JSON object; OpenAI carries arguments as a JSON string. Anthropic's toolu_… id is kept: the
    # client sends it back as tool_call_id, and it becomes the tool_result's tool_use_id unchanged.
    return oa.ResponseToolCall(
        id=block.id, function=oa.FunctionCall(name=block.name, arguments=arguments_json(block.input))
    )


def _error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    message, etype, code = f"Anthropic returned HTTP {status}", None, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        if isinstance(err.get("message"), str) and err["message"]:
            message = err["message"]
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        details = err.get("details")
        # SDK APIStatusError.error_code: "error.details.error_code from the response body, if present".
        if isinstance(details, dict) and isinstance(details.get("error_code"), str):
            code = details["error_code"]
    elif body.strip() and parsed is None:  # e.g. a load balancer's HTML page
        message = f"{message}: {body[:200].decode('utf-8', 'replace').strip()}"
    return UpstreamError(
        message, upstream_status=status, retry_after=parse_retry_after(headers), upstream_type=etype, code=code
    )


class AnthropicAdapter:
    """Translation for one configured Anthropic provider.

    ``anthropic_version`` is sent as the ``anthropic-version`` header and decides which parameters may be sent
    (2026-10-21 and later: no temperature/top_p). ``default_max_tokens`` fills Anthropic's required
    ``max_tokens`` when the client set neither ``max_completion_tokens`` nor ``max_tokens``.
    """

    framing = Framing.SSE

    def __init__(self, *, anthropic_version: str = DEFAULT_VERSION, default_max_tokens: int = 4096) -> None:
        if default_max_tokens < 1:
            raise ValueError("default_max_tokens must be at least 1")
        self._version = anthropic_version
        self._default_max_tokens = default_max_tokens
        self._headers = {"content-type": "application/json", "anthropic-version": anthropic_version}

    def encode_chat(self, chat: ChatInput, *, model: str, stream: bool) -> UpstreamRequest:
        req = chat.request
        if req.n is not None and req.n > 1:
            raise InvalidRequest("Anthropic generates one choice per request; n must be 1", param="n")
        if req.logprobs:
            raise InvalidRequest("Anthropic does not return log probabilities", param="logprobs")
        system, turns = rq.translate_messages(req.messages, chat.raw.get("messages"))
        body: dict[str, Any] = {"model": model, "max_tokens": req.output_limit or self._default_max_tokens}
        if system:
            body["system"] = system
        body["messages"] = turns
        if req.tools:
            body["tools"] = rq.translate_tools(req.tools)
        tool_choice = rq.translate_tool_choice(req)
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
        if any(stops):
            body["stop_sequences"] = [s for s in stops if s]  # an empty sequence would be a 400 for nothing
        body.update(rq.sampling(req, self._version))
        if req.response_format is not None:
            output_config = rq.translate_response_format(req.response_format)
            if output_config is not None:
                body["output_config"] = output_config
        if req.user:
            body["metadata"] = {"user_id": req.user}
        if stream:
            body["stream"] = True
        # Not sent, having no Messages counterpart: presence/frequency penalties, seed, service_tier and other
        # OpenAI-only fields. They only tune sampling; refusing them would break clients that always send them.
        return UpstreamRequest("/v1/messages", orjson.dumps(body), self._headers)

    def decode_chat(
        self, body: bytes, *, model: str, ident: StreamIdentity, single_tool_call: bool = False
    ) -> Completion:
        try:
            msg = wire.decode_message(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            try:
                err = wire.decode_error_body(body).error
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise UpstreamError("Anthropic sent a body that is not a message", upstream_status=502) from None
            status = wire.error_status(err.type)
            raise UpstreamError(err.message, upstream_status=status, upstream_type=err.type) from None
        # Text blocks are joined without a separator: with citations one answer arrives as several text blocks
        # that are consecutive pieces of the same prose.
        text = "".join(b.text for b in msg.content if b.type == "text")
        calls = [_tool_call(b) for b in msg.content if b.type == "tool_use"]
        finish = wire.finish_reason(msg.stop_reason)
        # The gateway's id, not Anthropic's msg_… (see output.completion).
        return completion(
            ident, msg.model or model, text=text, tool_calls=calls, finish=finish, usage=usage_from(msg.usage)
        )

    def stream_decoder(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> StreamDecoder:
        return AnthropicStreamDecoder(model=model, include_usage=include_usage, ident=ident)

    def decode_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        # docs "Errors": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
        # "request_id": "req_…"}. The status is kept as sent (529 stays 529): the fallback rule reads it.
        return _error_from_body(status, body, headers)

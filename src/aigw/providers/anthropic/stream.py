"""Anthropic's named SSE events → OpenAI chat completion chunks.

A stream is ``message_start``, then per content block ``content_block_start`` / ``content_block_delta``… /
``content_block_stop``, then ``message_delta`` (stop reason, cumulative usage) and ``message_stop``; ``ping`` may
come anywhere and ``error`` ends it (docs "Streaming Messages"; SDK ``lib/streaming/_messages.py``
``accumulate_event``). Translation rules:

* ``message_start`` emits nothing. The gateway commits to a target on the first chunk, and an
  ``overloaded_error`` often follows ``message_start`` directly: a role-only chunk would make it impossible to
  fall back. The role rides on the first real chunk instead.
* each ``tool_use`` block gets the next OpenAI tool-call index (block indexes count text blocks too), a header
  delta with id/type/name and ``arguments: ""``, then its ``partial_json`` fragments at that index.
* ``message_delta`` usage is cumulative: its counts replace earlier ones, they are not added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_never

import msgspec
import orjson

from aigw.errors import UpstreamError
from aigw.providers.anthropic import wire
from aigw.providers.base import StreamIdentity, UpstreamEvent
from aigw.providers.output import ChunkWriter, WriterStream
from aigw.schema import chat as oa
from aigw.schema.usage import Usage


def usage_from(u: wire.Usage) -> Usage:
    """Anthropic usage → the gateway's.

    Anthropic's ``input_tokens`` counts only the prompt tokens after the last cache breakpoint; cache reads and
    writes are reported beside it. OpenAI's ``prompt_tokens`` counts the whole prompt (its ``cached_tokens`` is a
    part of it), so prompt_tokens = input + cache_read + cache_creation, and the two cache counts are kept apart
    for pricing (reads are cheaper, writes dearer than plain input).
    """
    read = u.cache_read_input_tokens or 0
    write = u.cache_creation_input_tokens or 0
    return Usage(
        prompt_tokens=(u.input_tokens or 0) + read + write,
        completion_tokens=u.output_tokens or 0,
        cached_prompt_tokens=read,
        cache_write_tokens=write,
    )


def _merge(old: wire.Usage, new: wire.Usage) -> wire.Usage:
    # SDK accumulate_event: "Usage counts on a message_delta are cumulative totals, so they overwrite rather
    # than add; optional ones are omitted when not applicable, in which case the message_start value must
    # survive."
    return wire.Usage(
        input_tokens=old.input_tokens if new.input_tokens is None else new.input_tokens,
        output_tokens=old.output_tokens if new.output_tokens is None else new.output_tokens,
        cache_creation_input_tokens=(
            old.cache_creation_input_tokens
            if new.cache_creation_input_tokens is None
            else new.cache_creation_input_tokens
        ),
        cache_read_input_tokens=(
            old.cache_read_input_tokens if new.cache_read_input_tokens is None else new.cache_read_input_tokens
        ),
    )


class AnthropicStreamDecoder(WriterStream):
    """Per-request state of one Anthropic stream (not shared, not thread-safe)."""

    __slots__ = ("_args_sent", "_done", "_out", "_tools", "_usage")

    def __init__(self, *, model: str, include_usage: bool, ident: StreamIdentity) -> None:
        self._out = ChunkWriter(ident, model, include_usage)  # the role rides on the first real chunk (see above)
        self._usage: wire.Usage | None = None  # raw Anthropic counts so far (message_start, then message_delta)
        self._tools: dict[int, int] = {}  # content block index → OpenAI tool-call index
        self._args_sent: set[int] = set()  # tool blocks that have sent a non-empty arguments fragment
        self._done = False  # message_stop seen

    @property
    def usage(self) -> Usage | None:
        # Available from message_start on, so a stream that breaks midway still meters its prompt tokens.
        return usage_from(self._usage) if self._usage is not None else None

    def _tool_delta(self, block: int, arguments: str, *, call_id: str | None = None, name: str | None = None) -> bytes:
        # The header delta (id, type, name) opens a call, as OpenAI's does; fragments carry index + arguments only.
        fn = oa.ToolCallFunctionDelta(name=name, arguments=arguments)
        kind = "function" if call_id is not None else None
        call = oa.ToolCallDelta(index=self._tools[block], id=call_id, type=kind, function=fn)
        return self._out.chunk(oa.Delta(tool_calls=[call]))

    # -- events ----------------------------------------------------------------------------------------------

    def feed(self, event: UpstreamEvent) -> Sequence[bytes]:
        # Dispatch on the SSE event name, as the SDK does (`if sse.event is None: continue`); unknown names are
        # skipped unread, as the docs ask of clients.
        if event.type not in wire.STREAM_EVENTS:
            return ()
        try:
            ev = wire.decode_event(event.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"Anthropic sent a malformed {event.type} event ({exc})"
            raise UpstreamError(msg, upstream_status=502) from None
        if isinstance(ev, wire.ErrorEvent):
            # An error inside a 200 stream ends it: never a silent end. Its type gives the real status, so an
            # overloaded_error right after message_start (before any chunk) still falls back.
            err = ev.error
            message = f"Anthropic stream error ({err.type}): {err.message}"
            raise UpstreamError(message, upstream_status=wire.error_status(err.type), upstream_type=err.type)
        if self._done:
            return ()
        match ev:
            case wire.MessageStart(message=m):
                self._out.response_model = m.model or None
                self._usage = m.usage
                return ()
            case wire.ContentBlockStart(index=i, content_block=b):
                return self._block_start(i, b)
            case wire.ContentBlockDelta(index=i, delta=d):
                return self._block_delta(i, d)
            case wire.ContentBlockStop(index=i):
                if i in self._tools and i not in self._args_sent:
                    # A call without input streams no fragment (or only ""): send "{}" so the joined arguments
                    # parse, as the non-streamed `input: {}` does.
                    self._args_sent.add(i)
                    return (self._tool_delta(i, "{}"),)
                return ()
            case wire.MessageDelta(delta=d, usage=u):
                self._usage = _merge(self._usage or wire.Usage(), u)
                if d.stop_reason is None or self._out.finish_reason is not None:
                    return ()
                return (self._out.chunk(oa.Delta(), wire.finish_reason(d.stop_reason)),)
            case wire.MessageStop():
                self._done = True
                return ()
            case wire.Ping():
                return ()
            case _:
                assert_never(ev)

    def _block_start(self, index: int, block: wire.ContentBlock) -> Sequence[bytes]:
        if block.type == "text":
            return (self._out.chunk(oa.Delta(content=block.text)),) if block.text else ()
        if block.type != "tool_use":
            return ()  # thinking, redacted_thinking, server tool blocks: nothing OpenAI's chunk can carry
        self._tools[index] = len(self._tools)
        arguments = ""
        if isinstance(block.input, dict) and block.input:
            # The API starts tool blocks with `input: {}`; should one arrive whole, pass it on as one fragment.
            arguments = orjson.dumps(block.input).decode()
            self._args_sent.add(index)
        return (self._tool_delta(index, arguments, call_id=block.id, name=block.name),)

    def _block_delta(self, index: int, delta: wire.BlockDelta) -> Sequence[bytes]:
        if delta.type == "text_delta" and delta.text:
            return (self._out.chunk(oa.Delta(content=delta.text)),)
        if delta.type == "input_json_delta" and delta.partial_json and index in self._tools:
            self._args_sent.add(index)
            return (self._tool_delta(index, delta.partial_json),)
        return ()  # thinking_delta, signature_delta, citations_delta, empty fragments

    def finish(self) -> Sequence[bytes]:
        if not self._done:
            raise UpstreamError("Anthropic stream ended before message_stop", upstream_status=502)
        out = self._out
        # message_stop without a stop reason still ends with a finish chunk.
        last = () if out.finish_reason is not None else (out.chunk(oa.Delta(), "stop"),)
        return [*last, *out.usage_tail(self.usage or Usage())]

"""ConverseStream events (from :class:`aigw.providers.eventstream.EventStreamParser`) → OpenAI chunks.

A ConverseStream response is, per the API reference::

    messageStart {role}
    (contentBlockStart {start: {toolUse: {toolUseId, name}}, contentBlockIndex}     -- tool blocks only
     contentBlockDelta {delta: {text} | {toolUse: {input: "<JSON fragment>"}}, contentBlockIndex} ...
     contentBlockStop {contentBlockIndex}) ...
    messageStop {stopReason}
    metadata {usage, metrics}

Text blocks usually arrive without a contentBlockStart. Exceptions can replace any event after the HTTP 200
(``throttlingException``, ``modelStreamErrorException``, ``validationException``, ``internalServerException``,
``serviceUnavailableException``); the parser hands them over as ``exception:<type>`` events.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from aigw.errors import UpstreamError
from aigw.providers.base import StreamIdentity, UpstreamEvent
from aigw.providers.bedrock import wire
from aigw.providers.bedrock.request import NO_TOOLS_PLACEHOLDER
from aigw.providers.eventstream import ERROR_PREFIX, EXCEPTION_PREFIX
from aigw.providers.output import ChunkWriter, WriterStream
from aigw.schema import chat as oa
from aigw.schema.usage import Usage

_START = wire.decoder(wire.ContentBlockStart)
_DELTA = wire.decoder(wire.ContentBlockDelta)
_STOP = wire.decoder(wire.ContentBlockStop)
_MESSAGE_STOP = wire.decoder(wire.MessageStop)
_METADATA = wire.decoder(wire.StreamMetadata)
_EXCEPTION = wire.decoder(wire.ExceptionBody)


def _malformed(event: str) -> UpstreamError:
    return UpstreamError(f"Bedrock sent a malformed {event} event", upstream_status=502)


def stream_exception(event: UpstreamEvent) -> UpstreamError:
    """An ``exception:<type>`` / ``error:<code>`` event as a gateway error."""
    assert event.type is not None
    kind = event.type.partition(":")[2]
    try:
        message = _EXCEPTION.decode(event.data).text
    except msgspec.DecodeError:
        message = event.data[:200].decode("utf-8", "replace")
    if event.type.startswith(ERROR_PREFIX):
        # A protocol-level `:message-type: error` frame: not one of the API's modelled exceptions.
        return UpstreamError(f"Bedrock stream error {kind}: {message}", upstream_status=502)
    return wire.exception_error(kind, message, status=None)


class BedrockStreamDecoder(WriterStream):
    """``single_tool_call`` (the client sent ``parallel_tool_calls: false``): only the first tool call is emitted."""

    __slots__ = ("_args_seen", "_ignored", "_metadata", "_out", "_single", "_stopped", "_tools", "_usage")

    def __init__(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> None:
        # The role rides on the first real chunk, never alone on messageStart: the gateway commits to a target at
        # its first chunk, and an exception right after messageStart must still be able to fall back.
        self._out = ChunkWriter(ident, model, include_usage)
        self._out.response_model = model  # Converse does not name the model in its answer: it is the one asked for
        self._single = single_tool_call
        # contentBlockIndex → OpenAI tool_calls index. Bedrock numbers every content block (text blocks too), so a
        # text block at 0 and calls at 1 and 2 must become tool calls 0 and 1 (parallel calls keep their order).
        self._tools: dict[int, int] = {}
        self._args_seen: set[int] = set()
        # Blocks of calls the client must not see: to the no-tools placeholder (see request.py), and every call after
        # the first when single_tool_call.
        self._ignored: set[int] = set()
        self._stopped = False
        self._metadata = False
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def _tool_chunk(self, call: oa.ToolCallDelta) -> bytes:
        return self._out.chunk(oa.Delta(tool_calls=[call]))

    def feed(self, event: UpstreamEvent) -> Sequence[bytes]:
        kind = event.type
        if kind is not None and kind.startswith((EXCEPTION_PREFIX, ERROR_PREFIX)):
            raise stream_exception(event)
        try:
            return self._feed(kind, event.data)
        except msgspec.DecodeError:  # ValidationError is a DecodeError
            raise _malformed(kind or "untyped") from None

    def _feed(self, kind: str | None, data: bytes) -> Sequence[bytes]:
        if kind == "contentBlockDelta":
            ev = _DELTA.decode(data)
            index = ev.content_block_index
            if ev.delta.text:
                return (self._out.chunk(oa.Delta(content=ev.delta.text)),)
            if ev.delta.tool_use is not None:
                if index in self._ignored:
                    return ()
                if index not in self._tools:
                    raise UpstreamError("Bedrock sent tool input for a block it never started", upstream_status=502)
                if not ev.delta.tool_use.input:
                    return ()
                self._args_seen.add(index)
                fn = oa.ToolCallFunctionDelta(arguments=ev.delta.tool_use.input)
                return (self._tool_chunk(oa.ToolCallDelta(index=self._tools[index], function=fn)),)
            return ()  # reasoningContent, citations...: nothing OpenAI's chunk schema can carry
        if kind == "contentBlockStart":
            start = _START.decode(data)
            tool = start.start.tool_use
            if tool is None:
                return ()
            if start.content_block_index in self._tools or start.content_block_index in self._ignored:
                raise UpstreamError("Bedrock started the same content block twice", upstream_status=502)
            if tool.name == NO_TOOLS_PLACEHOLDER:
                # The model called the tool it was told does not exist: the client offered no tools (or said
                # tool_choice "none"), so it must not see a call.
                self._ignored.add(start.content_block_index)
                return ()
            if self._single and self._tools:
                # parallel_tool_calls: false, which Converse cannot be told (see request.py): a second or later call
                # is dropped, its input deltas and stop included. Usage stays as reported: those tokens were generated.
                self._ignored.add(start.content_block_index)
                return ()
            n = self._tools[start.content_block_index] = len(self._tools)
            # The first chunk of a call carries its id, type, name and empty arguments, as OpenAI's do.
            fn = oa.ToolCallFunctionDelta(name=tool.name, arguments="")
            return (self._tool_chunk(oa.ToolCallDelta(index=n, id=tool.tool_use_id, type="function", function=fn)),)
        if kind == "contentBlockStop":
            index = _STOP.decode(data).content_block_index
            if index in self._tools and index not in self._args_seen:
                # A call without arguments streams no input at all; "{}" keeps the client's accumulated arguments
                # valid JSON (what the non-streamed answer says for the same call).
                self._args_seen.add(index)
                fn = oa.ToolCallFunctionDelta(arguments="{}")
                return (self._tool_chunk(oa.ToolCallDelta(index=self._tools[index], function=fn)),)
            return ()
        if kind == "messageStop":
            stop = _MESSAGE_STOP.decode(data)
            if self._stopped:
                return ()
            self._stopped = True
            finish = wire.finish_reason(stop.stop_reason, tool_calls=bool(self._tools))
            return (self._out.chunk(oa.Delta(), finish),)
        if kind == "metadata":
            meta = _METADATA.decode(data)
            self._metadata = True
            self._usage = (meta.usage or wire.TokenUsage()).normalized()
            return ()
        return ()  # messageStart (its role is merged into the first chunk) and event types added later

    def finish(self) -> Sequence[bytes]:
        if not self._stopped:
            raise UpstreamError("Bedrock's stream ended before its messageStop event", upstream_status=502)
        if not self._metadata or self._usage is None:
            raise UpstreamError("Bedrock's stream ended before its metadata (usage) event", upstream_status=502)
        return self._out.usage_tail(self._usage)

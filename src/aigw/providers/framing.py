"""Bytes → UpstreamEvent. SSE follows the WHATWG event-stream parsing rules; NDJSON is one JSON value a line.

Both are incremental: ``feed`` takes whatever bytes arrived (split anywhere, even inside a UTF-8 sequence or a
CRLF) and returns the events completed so far.
"""

from __future__ import annotations

from typing import Protocol

from aigw.providers.base import Framing, UpstreamEvent


class SSEParser:
    __slots__ = ("_buf", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[UpstreamEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across reads
        self._pending_cr = chunk.endswith(b"\r")
        buf = self._buf + chunk
        out: list[UpstreamEvent] = []
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if nl < 0 and cr < 0:
                break
            if cr < 0 or (0 <= nl < cr):
                end, nxt = nl, nl + 1
            else:
                end = cr
                nxt = cr + 2 if cr + 1 < n and buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            self._line(buf[start:end], out)
            start = nxt
        self._buf = buf[start:]
        return out

    def _line(self, line: bytes, out: list[UpstreamEvent]) -> None:
        if not line:
            if self._data:
                out.append(UpstreamEvent(self._event, b"\n".join(self._data)))
            self._data = []
            self._event = None
            return
        if line.startswith(b":"):
            return  # comment / keep-alive
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # `id` and `retry` carry nothing the gateway needs.

    def close(self) -> list[UpstreamEvent]:
        """End of body: a final event without its blank line is dispatched only if complete (per WHATWG it is
        discarded; upstreams that omit the last blank line still expect it to count, so keep it if it parses)."""
        out: list[UpstreamEvent] = []
        if self._buf:
            self._line(self._buf, out)
            self._buf = b""
        if self._data:
            out.append(UpstreamEvent(self._event, b"\n".join(self._data)))
            self._data = []
        return out


class NDJSONParser:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[UpstreamEvent]:
        buf = self._buf + chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return [UpstreamEvent(None, ln) for ln in (x.strip() for x in lines) if ln]

    def close(self) -> list[UpstreamEvent]:
        rest, self._buf = self._buf.strip(), b""
        return [UpstreamEvent(None, rest)] if rest else []


class FrameParser(Protocol):
    """What transport.py drives: feed(bytes) -> events, close() -> trailing events."""

    def feed(self, chunk: bytes) -> list[UpstreamEvent]: ...

    def close(self) -> list[UpstreamEvent]: ...


def make_parser(framing: Framing) -> FrameParser:
    if framing is Framing.SSE:
        return SSEParser()
    if framing is Framing.NDJSON:
        return NDJSONParser()
    from aigw.providers.eventstream import EventStreamParser  # binary AWS frames: Bedrock only

    return EventStreamParser()

"""Bytes → UpstreamEvent. SSE follows the WHATWG event-stream parsing rules; NDJSON is one JSON value a line.

Both are incremental: ``feed`` takes whatever bytes arrived (split anywhere, even inside a UTF-8 sequence or a
CRLF) and returns the events completed so far.
"""

from __future__ import annotations

from typing import Protocol

from aigw.errors import UpstreamError
from aigw.providers.base import Framing, UpstreamEvent

# No line of an event stream is this long (a stream's events are small deltas): past it the upstream is broken, and
# holding more would take the gateway's memory.
MAX_LINE = 16 << 20
_BOM = b"\xef\xbb\xbf"


class _Pending:
    """The bytes of an unfinished line, kept as the reads that brought them: joined once, when the line ends (a
    long line arriving in small reads is then linear to read, not quadratic)."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_LINE:
            raise UpstreamError(f"upstream stream line over {MAX_LINE >> 20} MiB", upstream_status=502)
        self.parts.append(chunk)

    def take(self, chunk: bytes) -> bytes:
        if not self.parts:
            return chunk
        buf = b"".join(self.parts) + chunk
        self.parts, self.size = [], 0
        return buf


class SSEParser:
    __slots__ = ("_bom", "_data", "_event", "_pending", "_pending_cr")

    def __init__(self) -> None:
        self._pending = _Pending()
        self._data: list[bytes] = []
        self._event: str | None = None
        self._pending_cr = False
        self._bom = True  # the stream's first bytes may be a BOM, which WHATWG says to skip

    def feed(self, chunk: bytes) -> list[UpstreamEvent]:
        if self._bom:
            head = self._pending.take(chunk)
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._pending.add(head)  # too short to tell yet
                return []
            self._bom = False
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across reads
        self._pending_cr = chunk.endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.add(chunk)
            return []
        buf = self._pending.take(chunk)
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
        if start < n:
            self._pending.add(buf[start:])
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
        rest = self._pending.take(b"")
        if rest and not (self._bom and _BOM.startswith(rest)):
            self._line(rest, out)
        if self._data:
            out.append(UpstreamEvent(self._event, b"\n".join(self._data)))
            self._data = []
        return out


class NDJSONParser:
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = _Pending()

    def feed(self, chunk: bytes) -> list[UpstreamEvent]:
        if b"\n" not in chunk:
            self._pending.add(chunk)
            return []
        lines = self._pending.take(chunk).split(b"\n")
        last = lines.pop()
        if last:
            self._pending.add(last)
        return [UpstreamEvent(None, ln) for ln in (x.strip() for x in lines) if ln]

    def close(self) -> list[UpstreamEvent]:
        rest = self._pending.take(b"").strip()
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

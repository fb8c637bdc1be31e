"""AWS event-stream framing (``application/vnd.amazon.eventstream``): the binary frames of Bedrock ConverseStream.

The format, from AWS's "Event stream encoding" pages (Amazon Transcribe / Lex developer guides) and
``botocore/eventstream.py``::

    [total length u32][headers length u32][prelude CRC32 u32][headers ...][payload ...][message CRC32 u32]

"Each section ends with a 4-byte big-endian integer CRC checksum. The message CRC checksum includes the prelude
section and the data section" -- the prelude CRC covers the first 8 bytes, the message CRC every byte before it;
"total message overhead, including the prelude and both checksums, is 16 bytes". A header is: name length u8,
name (UTF-8), value type u8, value -- 0 true / 1 false (no bytes), 2 byte, 3 short, 4 int, 5 long (big-endian,
signed), 6 byte array / 7 string (u16 length, then the bytes), 8 timestamp (int64 milliseconds since the epoch),
9 UUID (16 bytes). "Any given header can only appear once."

How a frame becomes an :class:`UpstreamEvent` (what the Bedrock stream decoder matches on):

======================  =====================================  ==============================================
``:message-type``       ``UpstreamEvent.type``                 ``UpstreamEvent.data``
======================  =====================================  ==============================================
``event`` (or absent)   the ``:event-type`` header             the payload (JSON for Bedrock)
``exception``           ``"exception:" + :exception-type``     the payload, e.g. ``{"message": "..."}``
``error``               ``"error:" + :error-code``             ``{"message": <:error-message header>}`` (JSON)
======================  =====================================  ==============================================

The parser is incremental like the SSE/NDJSON parsers in ``framing.py``: ``feed`` takes bytes split anywhere and
returns the frames completed so far; ``close`` raises if the body ended inside a frame. Every frame's prelude CRC
is checked before its lengths are trusted, and its message CRC before its headers are read.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson

from aigw.errors import UpstreamError
from aigw.providers.base import UpstreamEvent

EXCEPTION_PREFIX = "exception:"
ERROR_PREFIX = "error:"

_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_PRELUDE_LEN = 12
_OVERHEAD = 16  # prelude (12) + message CRC (4)
# botocore's limits (eventstream.py _MAX_HEADERS_LENGTH / _MAX_PAYLOAD_LENGTH): a length beyond them is corruption.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class IntHeader:
    """An integer header of an explicit width (1 byte, 2 short, 4 int, 8 long); a plain ``int`` encodes as long."""

    value: int
    width: Literal[1, 2, 4, 8] = 8


HeaderValue = str | bytes | bool | int | IntHeader | datetime | uuid.UUID
_INT_TYPES: dict[int, tuple[int, str]] = {1: (2, ">b"), 2: (3, ">h"), 4: (4, ">i"), 8: (5, ">q")}
_INT_BY_TYPE = {t: (w, fmt) for w, (t, fmt) in _INT_TYPES.items()}


def _bad(what: str) -> UpstreamError:
    return UpstreamError(f"corrupt AWS event stream: {what}", upstream_status=502)


# ---- encoding (fixtures, the fake upstream) ----------------------------------------------------------------------


def _encode_value(value: HeaderValue) -> bytes:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return b"\x00" if value else b"\x01"
    if isinstance(value, int):
        value = IntHeader(value)
    if isinstance(value, IntHeader):
        kind, fmt = _INT_TYPES[value.width]
        return bytes((kind,)) + struct.pack(fmt, value.value)
    if isinstance(value, str):
        value = value.encode("utf-8")
        kind = 7
    elif isinstance(value, bytes):
        kind = 6
    elif isinstance(value, datetime):
        ms = (value - _EPOCH) // timedelta(milliseconds=1)
        return b"\x08" + struct.pack(">q", ms)
    else:
        return b"\x09" + value.bytes
    if len(value) > 0xFFFF:
        raise ValueError("event-stream header values are at most 65535 bytes")
    return bytes((kind,)) + struct.pack(">H", len(value)) + value


def encode_headers(headers: Mapping[str, HeaderValue]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw = name.encode("utf-8")
        if not 0 < len(raw) < 256:
            raise ValueError(f"event-stream header names are 1..255 bytes: {name!r}")
        out += bytes((len(raw),)) + raw + _encode_value(value)
    return bytes(out)


def encode_frame(raw_headers: bytes, payload: bytes) -> bytes:
    """One frame from already-encoded headers (tests use it to build headers this module would not write)."""
    total = _OVERHEAD + len(raw_headers) + len(payload)
    prelude = struct.pack(">II", total, len(raw_headers))
    head = prelude + _U32.pack(zlib.crc32(prelude)) + raw_headers + payload
    return head + _U32.pack(zlib.crc32(head))


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """Encode one event-stream message (the inverse of :class:`EventStreamParser`)."""
    return encode_frame(encode_headers(headers), payload)


def event_headers(event_type: str) -> dict[str, HeaderValue]:
    """The three headers AWS puts on a JSON event frame."""
    return {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}


def exception_headers(exception_type: str) -> dict[str, HeaderValue]:
    return {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}


# ---- decoding --------------------------------------------------------------------------------------------------


def decode_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            n = data[pos]
            name = data[pos + 1 : pos + 1 + n].decode("utf-8")
            pos += 1 + n
            kind = data[pos]
            pos += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _INT_BY_TYPE:
                width, fmt = _INT_BY_TYPE[kind]
                (value,) = struct.unpack_from(fmt, data, pos)
                pos += width
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", data, pos)
                raw = data[pos + 2 : pos + 2 + length]
                if len(raw) != length:
                    raise _bad("a header value runs past the header section")
                value = raw.decode("utf-8") if kind == 7 else raw
                pos += 2 + length
            elif kind == 8:
                (ms,) = struct.unpack_from(">q", data, pos)
                value = _EPOCH + timedelta(milliseconds=ms)
                pos += 8
            elif kind == 9:
                raw = data[pos : pos + 16]
                if len(raw) != 16:
                    raise _bad("a UUID header runs past the header section")
                value = uuid.UUID(bytes=raw)
                pos += 16
            else:
                raise _bad(f"unknown header value type {kind}")
            if name in headers:
                raise _bad(f"duplicate header {name!r}")
            headers[name] = value
    except (IndexError, struct.error):
        raise _bad("a header runs past the header section") from None
    except OverflowError:  # a timestamp outside what datetime holds
        raise _bad("a timestamp header out of range") from None
    except UnicodeDecodeError:
        raise _bad("a header is not UTF-8") from None
    if pos != end:
        raise _bad("a header runs past the header section")
    return headers


def _to_event(headers: Mapping[str, HeaderValue], payload: bytes) -> UpstreamEvent:
    kind = headers.get(":message-type", "event")
    if kind == "exception":
        return UpstreamEvent(EXCEPTION_PREFIX + str(headers.get(":exception-type", "")), payload)
    if kind == "error":
        message = str(headers.get(":error-message", ""))
        return UpstreamEvent(ERROR_PREFIX + str(headers.get(":error-code", "")), orjson.dumps({"message": message}))
    etype = headers.get(":event-type")
    return UpstreamEvent(etype if isinstance(etype, str) else None, payload)


class EventStreamParser:
    """bytes → :class:`UpstreamEvent`, one per frame; the ``FrameParser`` interface of ``framing.py``."""

    __slots__ = ("_buf", "_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: UpstreamError | None = None  # a corrupt frame met after good ones in the same read

    def feed(self, chunk: bytes) -> list[UpstreamEvent]:
        """The frames completed so far. A corrupt frame raises, but only once the frames before it are delivered
        (the next call raises): what the client gets must not depend on how TCP split the bytes."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += chunk
        out: list[UpstreamEvent] = []
        try:
            self._frames(buf, out)
        except UpstreamError as exc:
            if not out:
                raise
            self._error = exc
            self._buf = bytearray()  # nothing after a corrupt frame can be trusted
            return out
        return out

    def _frames(self, buf: bytearray, out: list[UpstreamEvent]) -> None:
        pos, n = 0, len(buf)
        with memoryview(buf) as view:
            while n - pos >= _PRELUDE_LEN:
                total, hlen, prelude_crc = _PRELUDE.unpack_from(view, pos)
                # The prelude has its own CRC "to ensure that [the receiver] can immediately detect corrupted
                # byte length information" (AWS docs): lengths are trusted only once it matches.
                if zlib.crc32(view[pos : pos + 8]) != prelude_crc:
                    raise _bad("prelude CRC mismatch")
                if hlen > MAX_HEADERS_LENGTH or total < _OVERHEAD + hlen:
                    raise _bad(f"impossible lengths (total {total}, headers {hlen})")
                if total - _OVERHEAD - hlen > MAX_PAYLOAD_LENGTH:
                    raise _bad(f"payload of {total - _OVERHEAD - hlen} bytes is over the limit")
                if n - pos < total:
                    break  # the rest of this frame has not arrived yet
                end = pos + total
                (message_crc,) = _U32.unpack_from(view, end - 4)
                if zlib.crc32(view[pos : end - 4]) != message_crc:
                    raise _bad("message CRC mismatch")
                headers_end = pos + _PRELUDE_LEN + hlen
                headers = decode_headers(bytes(view[pos + _PRELUDE_LEN : headers_end]))
                out.append(_to_event(headers, bytes(view[headers_end : end - 4])))
                pos = end
        del buf[:pos]

    def close(self) -> list[UpstreamEvent]:
        if self._error is not None:
            raise self._error
        left = len(self._buf)
        self._buf = bytearray()
        if left:
            raise UpstreamError(
                f"AWS event stream ended inside a frame ({left} bytes of an incomplete frame)", upstream_status=502
            )
        return []

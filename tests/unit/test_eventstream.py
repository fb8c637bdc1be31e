"""The AWS event-stream codec: round trips, bytes split anywhere, both CRCs, every header type -- and botocore's own
``EventStreamBuffer`` parsing the same bytes, so the format is AWS's and not our guess."""

from __future__ import annotations

import random
import struct
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from aigw.errors import UpstreamError
from aigw.providers.base import UpstreamEvent
from aigw.providers.eventstream import (
    MAX_PAYLOAD_LENGTH,
    EventStreamParser,
    HeaderValue,
    IntHeader,
    decode_headers,
    encode_frame,
    encode_message,
    event_headers,
    exception_headers,
)
from aigw.providers.framing import FrameParser

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bedrock"
VALID_CAPTURES = ["stream_text.bin", "stream_tools.bin", "stream_max_tokens.bin", "stream_exception.bin"]


def parse_all(data: bytes, step: int | None = None) -> list[UpstreamEvent]:
    parser = EventStreamParser()
    if step is None:
        events = parser.feed(data)
    else:
        events = [e for i in range(0, len(data), step) for e in parser.feed(data[i : i + step])]
    return events + parser.close()


def botocore_messages(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [(dict(m.headers), m.payload) for m in buf]


def test_parser_has_the_framing_interface() -> None:
    parser: FrameParser = EventStreamParser()
    assert parser.feed(b"") == []
    assert parser.close() == []


def test_known_vectors_from_an_independent_encoder() -> None:
    # The Elixir `event_stream` package's documented examples (hex.pm event_stream 0.1.0, lib/event_stream.ex).
    payload = b'{"foo": "bar"}'
    assert encode_message({}, payload) == bytes([0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138]) + payload + bytes(
        [174, 114, 88, 228]
    )
    with_header = encode_message({"content-type": "application/json"}, payload)
    assert with_header[:12] == bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70])
    assert with_header[-4:] == bytes([111, 162, 191, 59])


def test_round_trip() -> None:
    payload = orjson.dumps({"contentBlockIndex": 0, "delta": {"text": "héllo"}, "p": "abcdefgh"})
    data = encode_message(event_headers("contentBlockDelta"), payload)
    assert parse_all(data) == [UpstreamEvent("contentBlockDelta", payload)]
    assert botocore_messages(data) == [
        (
            {":event-type": "contentBlockDelta", ":content-type": "application/json", ":message-type": "event"},
            payload,
        )
    ]


def test_empty_payload_and_no_headers() -> None:
    data = encode_message({}, b"")
    assert len(data) == 16  # "total message overhead, including the prelude and both checksums, is 16 bytes"
    assert parse_all(data) == [UpstreamEvent(None, b"")]


@pytest.mark.parametrize("name", VALID_CAPTURES)
def test_split_at_every_offset_gives_the_same_events(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    whole = parse_all(data)
    assert len(whole) > 3
    assert parse_all(data, step=1) == whole  # byte by byte
    for cut in range(len(data) + 1):
        parser = EventStreamParser()
        assert parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.close() == whole


def test_random_chunkings() -> None:
    data = b"".join((FIXTURES / n).read_bytes() for n in VALID_CAPTURES[:3])
    expected = parse_all(data)
    rng = random.Random(20261126)
    for _ in range(200):
        parser, pos, got = EventStreamParser(), 0, []
        while pos < len(data):
            step = rng.choice([1, 2, 3, 11, 12, 13, 64, 500, 4096])
            got += parser.feed(data[pos : pos + step])
            pos += step
        assert got + parser.close() == expected


@pytest.mark.parametrize("name", VALID_CAPTURES)
def test_botocore_parses_the_captures_the_same_way(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    ours = parse_all(data)
    theirs = botocore_messages(data)
    assert len(ours) == len(theirs)
    for event, (headers, payload) in zip(ours, theirs, strict=True):
        assert headers[":content-type"] == "application/json"
        if headers[":message-type"] == "exception":
            assert event.type == f"exception:{headers[':exception-type']}"
        else:
            assert headers[":message-type"] == "event"
            assert event.type == headers[":event-type"]
        assert event.data == payload


def test_every_header_type_matches_botocore() -> None:
    when = datetime(2026, 11, 26, 6, 0, 0, 123000, tzinfo=UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers: dict[str, HeaderValue] = {
        "true": True,
        "false": False,
        "byte": IntHeader(-5, 1),
        "short": IntHeader(-300, 2),
        "int": IntHeader(70_000, 4),
        "long": 2**40,
        "bytes": b"\x00\x01\xff",
        "string": "héllo",
        "timestamp": when,
        "uuid": ident,
    }
    data = encode_message(headers, b"{}")
    (theirs, payload), *_ = botocore_messages(data)
    assert payload == b"{}"
    # botocore keeps timestamps as epoch milliseconds and UUIDs as their 16 bytes.
    assert theirs == {
        **{k: v.value if isinstance(v, IntHeader) else v for k, v in headers.items()},
        "timestamp": 1_795_672_800_123,
        "uuid": ident.bytes,
    }
    ours = decode_headers(data[12 : 12 + struct.unpack(">I", data[4:8])[0]])
    assert ours == {**{k: v.value if isinstance(v, IntHeader) else v for k, v in headers.items()}}
    # The wire type byte of each header is the documented one (0 true ... 9 uuid).
    types = []
    pos, raw = 0, data[12 : 12 + struct.unpack(">I", data[4:8])[0]]
    while pos < len(raw):
        n = raw[pos]
        kind = raw[pos + 1 + n]
        types.append(kind)
        pos += 2 + n + {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}.get(kind, 0)
        if kind in (6, 7):
            pos += 2 + struct.unpack(">H", raw[pos : pos + 2])[0]
    assert types == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_exception_and_error_frames() -> None:
    throttled = encode_message(exception_headers("throttlingException"), b'{"message":"Too many tokens"}')
    error = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "it broke"}, b""
    )
    assert parse_all(throttled + error) == [
        UpstreamEvent("exception:throttlingException", b'{"message":"Too many tokens"}'),
        UpstreamEvent("error:InternalFailure", b'{"message":"it broke"}'),
    ]


def test_frame_without_message_type_is_an_event() -> None:
    assert parse_all(encode_message({":event-type": "messageStop"}, b"{}")) == [UpstreamEvent("messageStop", b"{}")]


# ---- corruption -------------------------------------------------------------------------------------------------


def flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


GOOD = encode_message(event_headers("messageStart"), b'{"role":"assistant"}')


@pytest.mark.parametrize("index", range(0, 12))
def test_prelude_corruption_is_detected(index: int) -> None:
    # Bytes 0-7 are the lengths, 8-11 the prelude CRC: a flip anywhere there fails the prelude check.
    bad = flipped(GOOD, index)
    with pytest.raises(UpstreamError) as ei:
        parse_all(GOOD + bad, step=1)
    assert ei.value.upstream_status == 502
    assert "prelude CRC" in ei.value.message


@pytest.mark.parametrize("index", [12, 20, len(GOOD) - 10, len(GOOD) - 5, len(GOOD) - 1])
def test_message_corruption_is_detected(index: int) -> None:
    # A header byte, a payload byte, the message CRC itself.
    bad = flipped(GOOD, index)
    with pytest.raises(UpstreamError) as ei:
        parse_all(bad)
    assert "message CRC" in ei.value.message
    with pytest.raises(ChecksumMismatch):
        botocore_messages(bad)  # botocore agrees it is corrupt


def test_frames_before_a_corrupt_one_are_delivered() -> None:
    parser = EventStreamParser()
    assert parser.feed(GOOD) == [UpstreamEvent("messageStart", b'{"role":"assistant"}')]
    with pytest.raises(UpstreamError):
        parser.feed(flipped(GOOD, 30))


def test_corrupt_capture() -> None:
    data = (FIXTURES / "stream_corrupt.bin").read_bytes()
    parser, got = EventStreamParser(), []
    with pytest.raises(UpstreamError) as ei:
        for i in range(len(data)):
            got += parser.feed(data[i : i + 1])
    assert "message CRC" in ei.value.message
    assert [e.type for e in got] == ["messageStart", "contentBlockDelta"]  # the third frame is the bad one


def test_truncated_frame_raises_at_close() -> None:
    parser = EventStreamParser()
    assert parser.feed(GOOD + GOOD[:5]) == [UpstreamEvent("messageStart", b'{"role":"assistant"}')]
    with pytest.raises(UpstreamError) as ei:
        parser.close()
    assert ei.value.upstream_status == 502
    assert "5 bytes" in ei.value.message


def test_truncated_capture_raises_at_close() -> None:
    with pytest.raises(UpstreamError, match="ended inside a frame"):
        parse_all((FIXTURES / "stream_truncated.bin").read_bytes(), step=7)


def prelude(total: int, headers_len: int) -> bytes:
    head = struct.pack(">II", total, headers_len)
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize(
    ("total", "headers_len"), [(15, 0), (20, 8), (16, 0xFFFF_FFFF), (16 + MAX_PAYLOAD_LENGTH + 1, 0)]
)
def test_impossible_lengths_fail_at_once(total: int, headers_len: int) -> None:
    # With a valid prelude CRC the lengths are read; impossible ones fail before waiting for `total` bytes.
    with pytest.raises(UpstreamError, match=r"impossible lengths|over the limit"):
        EventStreamParser().feed(prelude(total, headers_len))


@pytest.mark.parametrize(
    "raw_headers",
    [
        b"\x04name\x0a",  # unknown value type 10
        b"\x04name\x07\x00\x09abc",  # a string longer than the header section
        b"\x04name\x05\x00\x00",  # a long cut short
        b"\x04name\x07\x00\x01a\x04name\x07\x00\x01b",  # "any given header can only appear once"
        b"\x02\xff\xfe\x07\x00\x01a",  # a name that is not UTF-8
    ],
)
def test_malformed_headers(raw_headers: bytes) -> None:
    with pytest.raises(UpstreamError, match="corrupt AWS event stream"):
        EventStreamParser().feed(encode_frame(raw_headers, b"{}"))


def test_encoder_rejects_what_the_format_cannot_hold() -> None:
    with pytest.raises(ValueError):
        encode_message({"x" * 256: "v"}, b"")
    with pytest.raises(ValueError):
        encode_message({"big": "v" * 70_000}, b"")


@pytest.mark.parametrize("close", [False, True])
def test_frames_before_a_corrupt_one_in_the_same_read_are_delivered(close: bool) -> None:
    """Good frames and a corrupt one arriving in one read: the good ones first, the error on the next call, as
    when TCP splits them (what the client gets must not depend on the split)."""
    parser = EventStreamParser()
    assert parser.feed(GOOD + flipped(GOOD, 30)) == [UpstreamEvent("messageStart", b'{"role":"assistant"}')]
    with pytest.raises(UpstreamError, match="CRC"):
        parser.close() if close else parser.feed(GOOD)


def test_a_timestamp_out_of_range_is_a_corrupt_stream() -> None:
    frame = encode_message({":message-type": "event", ":event-type": "x", "t": datetime(2026, 1, 1, tzinfo=UTC)}, b"{}")
    # The timestamp's 8 bytes are the last before the payload and the message CRC: make it 2**62 ms, re-checksummed.
    body = bytearray(frame[:-4])
    ts_at = len(body) - 2 - 8
    body[ts_at : ts_at + 8] = struct.pack(">q", 2**62)
    data = bytes(body) + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(UpstreamError, match="timestamp"):
        EventStreamParser().feed(data)

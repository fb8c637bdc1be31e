from __future__ import annotations

import itertools

import pytest

from aigw.errors import UpstreamError
from aigw.providers.base import UpstreamEvent
from aigw.providers.framing import NDJSONParser, SSEParser

TRANSCRIPT = (
    b": keep-alive comment\n\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: line1\r\ndata: line2\r\n\r\n"
    b"id: 7\nretry: 10\ndata:no-space\n\n"
    b"data: caf\xc3\xa9\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    UpstreamEvent("message_start", b'{"a": 1}'),
    UpstreamEvent(None, b"line1\nline2"),
    UpstreamEvent(None, b"no-space"),
    UpstreamEvent(None, "café".encode()),
    UpstreamEvent(None, b"[DONE]"),
]


def _feed_all(parser: SSEParser | NDJSONParser, parts: list[bytes]) -> list[UpstreamEvent]:
    out: list[UpstreamEvent] = []
    for p in parts:
        out += parser.feed(p)
    return out + parser.close()


def test_sse_whole_transcript() -> None:
    assert _feed_all(SSEParser(), [TRANSCRIPT]) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(TRANSCRIPT)))
def test_sse_split_anywhere(cut: int) -> None:
    # Network reads split bytes anywhere: inside a CRLF, inside a UTF-8 sequence, inside a field name.
    assert _feed_all(SSEParser(), [TRANSCRIPT[:cut], TRANSCRIPT[cut:]]) == EXPECTED


def test_sse_byte_by_byte() -> None:
    assert _feed_all(SSEParser(), [bytes([b]) for b in TRANSCRIPT]) == EXPECTED


def test_sse_event_name_resets_after_dispatch() -> None:
    events = _feed_all(SSEParser(), [b"event: ping\ndata: {}\n\ndata: x\n\n"])
    assert events == [UpstreamEvent("ping", b"{}"), UpstreamEvent(None, b"x")]


def test_sse_final_event_without_blank_line_is_kept() -> None:
    assert _feed_all(SSEParser(), [b"data: a\n\ndata: tail"]) == [
        UpstreamEvent(None, b"a"),
        UpstreamEvent(None, b"tail"),
    ]


def test_ndjson_split_and_blank_lines() -> None:
    body = b'{"a":1}\n\n{"b":2}\r\n{"c":3}'
    for a, b in itertools.combinations(range(1, len(body)), 2):
        got = _feed_all(NDJSONParser(), [body[:a], body[a:b], body[b:]])
        assert got == [
            UpstreamEvent(None, b'{"a":1}'),
            UpstreamEvent(None, b'{"b":2}'),
            UpstreamEvent(None, b'{"c":3}'),
        ]


def test_sse_skips_a_leading_bom_even_split() -> None:
    stream = b'\xef\xbb\xbfdata: {"a":1}\n\ndata: [DONE]\n\n'
    for cut in range(1, 5):
        got = _feed_all(SSEParser(), [stream[:cut], stream[cut:]])
        assert [e.data for e in got] == [b'{"a":1}', b"[DONE]"], cut
    assert [e.data for e in _feed_all(SSEParser(), [b"\xef\xbb", b""])] == []


@pytest.mark.parametrize("kind", ["sse", "ndjson"])
def test_a_line_without_end_is_bounded(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream that never ends its line cannot make the gateway hold more than the bound; a line within it,
    however many reads it takes, comes out whole."""
    monkeypatch.setattr("aigw.providers.framing.MAX_LINE", 1 << 16)
    parser: SSEParser | NDJSONParser = SSEParser() if kind == "sse" else NDJSONParser()
    line = b"data: " + b"x" * 60_000 if kind == "sse" else b'{"x":"' + b"y" * 60_000 + b'"}'
    for i in range(0, len(line), 1000):
        assert parser.feed(line[i : i + 1000]) == []
    (event,) = parser.feed(b"\n\n")
    assert event.data == line.removeprefix(b"data: ")
    with pytest.raises(UpstreamError, match="over"):
        for _ in range(100):
            parser.feed(b"z" * 1000)

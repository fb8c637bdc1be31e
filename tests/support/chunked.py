"""A chat request over a raw socket, its response body read as the HTTP/1.1 chunks it came in (one per write of
the gateway's)."""

from __future__ import annotations

import json
import socket
from typing import Any

from tests.support.gateway import RunningGateway


def http_chunks(gw: RunningGateway, key: str, body: dict[str, Any]) -> tuple[dict[str, str], list[bytes]]:
    """POST over a raw socket; the response's head and each HTTP/1.1 chunk of its body as it came."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key}\r\ncontent-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
            + payload
        )
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 200"), head
    assert headers["transfer-encoding"] == "chunked"
    parts: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return headers, parts
        parts.append(rest[:size])
        rest = rest[size + 2 :]

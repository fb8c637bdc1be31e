"""The server protocol (api/server.py): a response with a content-length leaves in one write, head and body; every
other response goes out as uvicorn writes it. Against a real uvicorn server over raw sockets, and the transport
wrapper on its own."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from aigw.api.server import HeadWithBodyProtocol, _HeadWithBody
from tests.support.gateway import free_port


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


def wrapped() -> tuple[_HeadWithBody, Recording]:
    rec = Recording()
    return _HeadWithBody(rec), rec  # type: ignore[arg-type]


def test_a_head_with_a_length_leaves_with_its_body() -> None:
    t, rec = wrapped()
    t.write(HEAD)
    assert rec.writes == []
    t.write(b"{}")
    assert rec.writes == [HEAD + b"{}"]


def test_an_interim_100_continue_is_not_held() -> None:
    t, rec = wrapped()
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert rec.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    t.write(HEAD)
    t.write(b"{}")
    assert rec.writes[1:] == [HEAD + b"{}"]


def test_a_chunked_head_leaves_at_once() -> None:
    t, rec = wrapped()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    t.write(head)
    assert rec.writes == [head]
    t.write(b"5\r\nhello\r\n")
    assert rec.writes == [head, b"5\r\nhello\r\n"]


def test_a_body_that_looks_like_a_head_is_body() -> None:
    """A message/http payload, sent in pieces: only the cycle's first head is a head."""
    t, rec = wrapped()
    t.write(HEAD.replace(b"content-length: 2", b"content-length: 47"))
    t.write(b"payload: ")
    looks_like_a_head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    t.write(looks_like_a_head)
    assert rec.writes[-1] == looks_like_a_head and len(rec.writes) == 2


def test_a_large_body_is_not_copied_to_join_its_head() -> None:
    t, rec = wrapped()
    body = b"x" * (1024 * 1024)
    t.write(HEAD)
    t.write(body)
    assert rec.writes[0] == HEAD and rec.writes[1] is body


def test_a_held_head_is_written_before_the_connection_closes() -> None:
    t, rec = wrapped()
    t.write(HEAD)
    t.close()
    assert rec.writes == [HEAD] and rec.closed
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's own


# -- a real server ---------------------------------------------------------------------------------------------------
class App:
    """/json: a body with a length; /stream: a chunked body whose first chunk waits for /release; /fail: the app
    fails after the head."""

    def __init__(self) -> None:
        self.release = asyncio.Event()  # created outside the server's loop: bound to it on first wait
        self.head_sent = threading.Event()  # /held: uvicorn has been given the head

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/release":
            self.release.set()
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"late", "more_body": False})
            return
        body = b'{"ok":true}'
        if scope["method"] == "POST":
            while True:
                msg = await receive()
                body = msg.get("body", b"") or body
                if not msg.get("more_body"):
                    break
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        if path == "/fail":
            raise RuntimeError("failed after the head")
        if path == "/held":
            self.head_sent.set()
            await self.release.wait()
        await send({"type": "http.response.body", "body": body})


APP = App()


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        APP, host="127.0.0.1", port=port, http=HeadWithBodyProtocol, loop="asyncio", log_level="critical"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            threading.Event().wait(0.01)
    yield port
    srv.should_exit = True
    thread.join(10)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)  # a held-for-good head fails the test here
    return s


def read_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_responses_on_one_keep_alive_connection(server: int) -> None:
    with connect(server) as s:
        for _ in range(3):
            s.sendall(b"GET /json HTTP/1.1\r\nhost: t\r\n\r\n")
            got = read_until(s, b'{"ok":true}')
            assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 11\r\n" in got
            assert got.endswith(b'\r\n\r\n{"ok":true}')


def test_a_head_request_gets_its_head(server: int) -> None:
    with connect(server) as s:
        s.sendall(b"HEAD /json HTTP/1.1\r\nhost: t\r\n\r\n")
        got = read_until(s, b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\n")
        s.sendall(b"GET /json HTTP/1.1\r\nhost: t\r\n\r\n")  # and the connection is still usable
        assert read_until(s, b'{"ok":true}').endswith(b'{"ok":true}')


def test_expect_100_continue(server: int) -> None:
    with connect(server) as s:
        s.sendall(b"POST /json HTTP/1.1\r\nhost: t\r\ncontent-length: 7\r\nexpect: 100-continue\r\n\r\n")
        assert read_until(s, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b'{"a":1}')
        got = read_until(s, b'{"a":1}')
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b'\r\n\r\n{"a":1}')


def test_a_streamed_head_is_not_held_for_its_body(server: int) -> None:
    APP.release.clear()
    with connect(server) as s, connect(server) as other:
        s.sendall(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        head = read_until(s, b"\r\n\r\n")  # before any body exists
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
        other.sendall(b"GET /release HTTP/1.1\r\nhost: t\r\n\r\n")
        assert read_until(s, b"0\r\n\r\n").endswith(b"4\r\nlate\r\n0\r\n\r\n")


def test_an_app_failing_after_the_head(server: int) -> None:
    with connect(server) as s:
        s.sendall(b"GET /fail HTTP/1.1\r\nhost: t\r\n\r\n")
        got = read_until(s, b"never")  # until the server closes the connection
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\n")


def test_the_head_waits_for_its_body_on_the_real_server(server: int) -> None:
    """uvicorn's own cycle writes through the wrapper (not only the wrapper alone): once the app has handed uvicorn
    the head, nothing has reached the client until the body is sent."""
    APP.release.clear()
    APP.head_sent.clear()
    with connect(server) as s, connect(server) as other:
        s.sendall(b"GET /held HTTP/1.1\r\nhost: t\r\n\r\n")
        assert APP.head_sent.wait(5)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):  # a head written at once would be in this socket already (loopback)
            s.recv(65536)
        s.setblocking(True)
        other.sendall(b"GET /release HTTP/1.1\r\nhost: t\r\n\r\n")
        got = read_until(s, b'{"ok":true}')
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b'\r\n\r\n{"ok":true}')

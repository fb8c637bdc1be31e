"""The lean upstream HTTP/1.1 client (aigw.providers.http1) against a scripted TCP server on this machine: framing
(length, chunked, until close), keep-alive reuse and its limits, gzip, timeouts, broken and malformed responses,
cancellation, and what goes on the wire."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aigw.providers.http1 import ConnectFailed, Disconnected, Http1Pool, Response, TimedOut

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # request bytes -> keep the connection open?


class Scripted:
    """A TCP server that reads each request whole (head + content-length body) and lets the test answer it."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.ended = asyncio.Event()  # a connection ended (the client closed it, or the handler did)
        self.handler: Handler = ok
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.handler(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.ended.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def call(
        self, pool: Http1Pool, *, first_byte_s: float = 5, total_s: float = 10, body: bytes = b"{}"
    ) -> Response:
        return await pool.request(
            "POST", "http", "127.0.0.1", self.port, "/v1/chat/completions",
            {"host": f"127.0.0.1:{self.port}", "content-type": "application/json"}, body,
            connect_s=2, first_byte_s=first_byte_s, total_s=total_s,
        )  # fmt: skip


async def ok(request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}')
    await writer.drain()
    return True


@pytest.fixture
async def server() -> AsyncIterator[Scripted]:
    s = Scripted()
    s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
    yield s
    for w in s.writers:
        w.close()
    s.server.close()
    await s.server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[Http1Pool]:
    p = Http1Pool()
    yield p
    p.close()


async def test_the_request_on_the_wire_and_the_response(server: Scripted, pool: Http1Pool) -> None:
    resp = await server.call(pool, body=b'{"model":"m"}')
    assert (resp.status, resp.body) == (200, b'{"ok":true}')
    assert resp.headers["content-type"] == "application/json", "header names lower-cased"
    [request] = server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert sorted(lines[1:]) == sorted(
        [b"content-length: 13", f"host: 127.0.0.1:{server.port}".encode(), b"content-type: application/json"]
    )
    assert body == b'{"model":"m"}'


async def test_keep_alive_reuses_one_connection(server: Scripted, pool: Http1Pool) -> None:
    for _ in range(5):
        assert (await server.call(pool)).status == 200
    assert server.connections == 1
    results = await asyncio.gather(*(server.call(pool) for _ in range(4)))  # concurrent: one connection each
    assert [r.status for r in results] == [200] * 4 and server.connections == 4


async def test_chunked_and_until_close_bodies(server: Scripted, pool: Http1Pool) -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b'{"a":', b'"bc"', b"}"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    server.handler = chunked
    assert (await server.call(pool)).body == b'{"a":"bc"}'

    async def until_close(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000)
        await writer.drain()
        return False  # the end of the connection ends the body

    server.handler = until_close
    assert (await server.call(pool)).body == b"x" * 100_000
    server.handler = ok
    assert (await server.call(pool)).status == 200
    assert server.connections == 2, "chunked kept its connection alive; the one closed after its body is not reused"


async def test_an_interim_response_is_skipped(server: Scripted, pool: Http1Pool) -> None:
    async def interim(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await ok(request, writer)

    server.handler = interim
    resp = await server.call(pool)
    assert (resp.status, resp.body) == (200, b'{"ok":true}')


async def test_gzip_and_deflate_bodies_are_decoded(server: Scripted, pool: Http1Pool) -> None:
    payload = b'{"text":"' + b"ab" * 1000 + b'"}'
    for encoding, encoded in (("gzip", gzip.compress(payload)), ("deflate", zlib.compress(payload))):

        async def compressed(
            request: bytes, writer: asyncio.StreamWriter, enc: str = encoding, data: bytes = encoded
        ) -> bool:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (enc.encode(), len(data), data)
            )
            return True

        server.handler = compressed
        assert (await server.call(pool)).body == payload

    async def bad_gzip(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope")
        return True

    server.handler = bad_gzip
    with pytest.raises(Disconnected, match="does not decompress"):
        await server.call(pool)


async def test_an_idle_connection_the_server_closed_is_not_used(server: Scripted, pool: Http1Pool) -> None:
    async def close_after(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await ok(request, writer)
        return False  # keep-alive advertised, then closed while idle (a server's own idle timeout)

    server.handler = close_after
    assert (await server.call(pool)).status == 200
    await server.writers[0].wait_closed()
    [idle] = [conn for conns in pool._idle.values() for conn in conns]
    deadline = asyncio.get_running_loop().time() + 5
    while not idle.closed and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)  # until the client has seen the close (connection_lost)
    assert idle.closed
    server.handler = ok
    assert (await server.call(pool)).status == 200
    assert server.connections == 2


async def test_idle_connections_expire(server: Scripted) -> None:
    pool = Http1Pool(keepalive_s=0.0)
    try:
        for _ in range(3):
            assert (await server.call(pool)).status == 200
    finally:
        pool.close()
    assert server.connections == 3


async def test_a_response_cut_short_is_an_error(server: Scripted, pool: Http1Pool) -> None:
    async def short(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()
        return False

    server.handler = short
    with pytest.raises(Disconnected, match="before the response was complete"):
        await server.call(pool)


async def test_a_malformed_response_is_an_error(server: Scripted, pool: Http1Pool) -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        return True

    server.handler = garbage
    with pytest.raises(Disconnected, match="malformed"):
        await server.call(pool)


async def test_first_byte_and_total_timeouts(server: Scripted, pool: Http1Pool) -> None:
    release = asyncio.Event()

    async def silent(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        return False

    server.handler = silent
    with pytest.raises(TimedOut, match="sent no response"):
        await server.call(pool, first_byte_s=0.1, total_s=10)

    async def dribbles(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        await writer.drain()
        await release.wait()
        return False

    server.handler = dribbles
    with pytest.raises(TimedOut, match="did not answer in time"):
        await server.call(pool, first_byte_s=5, total_s=0.2)
    release.set()


async def test_connect_failures(pool: Http1Pool) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    with pytest.raises(ConnectFailed):
        await pool.request(
            "POST", "http", "127.0.0.1", port, "/", {"host": "x"}, b"", connect_s=2, first_byte_s=2, total_s=2
        )


async def test_a_cancelled_request_drops_its_connection(server: Scripted, pool: Http1Pool) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        started.set()
        await release.wait()
        return await ok(request, writer)

    server.handler = slow
    task = asyncio.ensure_future(server.call(pool))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await asyncio.wait_for(server.ended.wait(), 5)  # the client closed it: no socket left behind
    server.handler = ok
    assert (await server.call(pool)).status == 200
    assert server.connections == 2, "the abandoned exchange's late response must not be read as the next one's"


async def test_line_breaks_in_headers_or_target_are_refused(server: Scripted, pool: Http1Pool) -> None:
    for headers, target in (({"x-key": "a\r\nx-injected: 1"}, "/"), ({"host": "x"}, "/a b HTTP/1.1\r\nx: y")):
        with pytest.raises(ValueError):
            await pool.request(
                "POST", "http", "127.0.0.1", server.port, target, headers, b"", connect_s=2, first_byte_s=2, total_s=2
            )
    assert server.requests == []


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aigw-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_verifies_the_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    s = Scripted()
    s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0, ssl=server_ctx)

    async def call(pool: Http1Pool) -> Response:
        return await pool.request(
            "POST", "https", "127.0.0.1", s.port, "/v1/chat/completions", {"host": "127.0.0.1"}, b"{}",
            connect_s=5, first_byte_s=5, total_s=10,
        )  # fmt: skip

    default, trusting = Http1Pool(), Http1Pool(tls=ssl.create_default_context(cafile=str(cert)))
    try:
        with pytest.raises(ConnectFailed):  # the system's CAs do not know it: no exchange
            await call(default)
        assert s.requests == []
        resp = await call(trusting)
        assert (resp.status, resp.body) == (200, b'{"ok":true}')
    finally:
        default.close()
        trusting.close()
        s.server.close()
        await s.server.wait_closed()


async def test_bytes_after_a_response_are_not_taken_for_the_next_one(server: Scripted, pool: Http1Pool) -> None:
    async def stray(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 500 Oops\r\nx-stray: yes\r\n")
        await writer.drain()
        return True

    server.handler = stray
    resp = await server.call(pool)
    assert (resp.status, resp.body, "x-stray" in resp.headers) == (200, b"{}", False)
    server.handler = ok
    assert (await server.call(pool)).body == b'{"ok":true}'
    assert server.connections == 2, "the connection that carried stray bytes was dropped"


async def test_a_header_that_is_not_latin1_opens_no_connection(server: Scripted, pool: Http1Pool) -> None:
    with pytest.raises(ValueError, match="latin-1"):
        await pool.request(
            "POST", "http", "127.0.0.1", server.port, "/", {"authorization": "Bearer \u2019key"}, b"",
            connect_s=2, first_byte_s=2, total_s=2,
        )  # fmt: skip
    assert server.connections == 0


async def test_a_body_cut_by_a_reset_or_a_close_is_not_a_response(server: Scripted, pool: Http1Pool) -> None:
    async def reset(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"partial')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()
        return False

    server.handler = reset
    with pytest.raises(Disconnected):
        await server.call(pool)

    async def chunked_cut(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        return False  # closed before the last chunk

    server.handler = chunked_cut
    with pytest.raises(Disconnected):
        await server.call(pool)


async def test_an_empty_body_is_not_decompressed(server: Scripted, pool: Http1Pool) -> None:
    async def no_content(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n")
        return True

    server.handler = no_content
    resp = await server.call(pool)
    assert (resp.status, resp.body) == (503, b"")


async def test_no_timer_outlives_its_exchange(server: Scripted, pool: Http1Pool) -> None:
    """A response still arriving at the first-byte bound re-arms the timer for the total bound; that one is
    cancelled with the exchange too."""

    async def late_body(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.15)  # past the first-byte bound below: the server's pace, not the test's
        writer.write(b"{}")
        return True

    server.handler = late_body
    resp = await server.call(pool, first_byte_s=0.05, total_s=30)
    assert resp.body == b"{}"
    loop = asyncio.get_running_loop()
    pending = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled() and "_check" in repr(h)]
    assert pending == []


def _answer(status: bytes, body: bytes, *headers: bytes) -> Handler:
    async def handler(request: bytes, writer: asyncio.StreamWriter) -> bool:
        head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            len(body),
            b"".join(h + b"\r\n" for h in headers),
        )
        writer.write(head + body)
        return True

    return handler


async def test_gzip_members_are_all_read_and_trailing_bytes_refused(server: Scripted, pool: Http1Pool) -> None:
    two = gzip.compress(b'{"a":') + gzip.compress(b"1}")
    server.handler = _answer(b"200 OK", two, b"Content-Encoding: gzip")
    assert (await server.call(pool)).body == b'{"a":1}', "a gzip body may hold several members"
    server.handler = _answer(b"200 OK", gzip.compress(b"{}") + b"GARBAGE", b"Content-Encoding: gzip")
    with pytest.raises(Disconnected, match="does not decompress"):
        await server.call(pool)
    server.handler = _answer(b"200 OK", zlib.compress(b"{}") + b"junk", b"Content-Encoding: deflate")
    with pytest.raises(Disconnected, match="does not decompress"):
        await server.call(pool)


async def test_a_decompression_bomb_is_bounded(
    server: Scripted, pool: Http1Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound a success body is refused and an error body is cut (only its message is read), instead of
    the whole expansion being held in memory."""
    monkeypatch.setattr("aigw.providers.http1.MAX_BODY", 1 << 20)
    bomb = gzip.compress(b"0" * (8 << 20))  # 8 MiB from ~8 KiB
    server.handler = _answer(b"200 OK", bomb, b"Content-Encoding: gzip")
    with pytest.raises(Disconnected, match="over 1 MiB once decompressed"):
        await server.call(pool)
    server.handler = _answer(b"500 Internal Server Error", bomb, b"Content-Encoding: gzip")
    response = await server.call(pool)
    assert response.status == 500 and response.body == b"0" * (64 << 10)


async def test_oversized_bodies_and_headers_are_refused(
    server: Scripted, pool: Http1Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aigw.providers.http1.MAX_BODY", 1 << 16)
    server.handler = _answer(b"200 OK", b"x" * ((1 << 16) + 1))
    with pytest.raises(Disconnected, match="body over"):
        await server.call(pool)
    server.handler = _answer(b"200 OK", b"x" * (1 << 16))
    assert len((await server.call(pool)).body) == 1 << 16, "the bound itself is allowed"
    server.handler = _answer(b"200 OK", b"{}", *(b"X-Filler-%d: v" % i for i in range(300)))
    with pytest.raises(Disconnected, match="response headers over"):
        await server.call(pool)
    server.handler = _answer(b"200 OK", b"{}", b"X-Huge: " + b"v" * (300 << 10))
    with pytest.raises(Disconnected, match="response headers over"):
        await server.call(pool)
    server.handler = ok
    assert (await server.call(pool)).status == 200, "the pool is still usable"


async def test_chunked_trailers_do_not_override_headers(server: Scripted, pool: Http1Pool) -> None:
    async def trailer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
            b"Trailer: Content-Type\r\n\r\n2\r\n{}\r\n0\r\nContent-Type: text/evil\r\nX-Late: 1\r\n\r\n"
        )
        return True

    server.handler = trailer
    response = await server.call(pool)
    assert response.body == b"{}" and response.headers["content-type"] == "application/json"
    assert "x-late" not in response.headers


async def test_an_error_after_a_large_body_is_not_reused(server: Scripted, pool: Http1Pool) -> None:
    """An error answer to a large request may have come before the server read the whole body, and part of it
    may still sit unsent where the client cannot see it (under TLS): that connection is never reused."""
    server.handler = _answer(b"413 Payload Too Large", b'{"error":"too large"}')
    assert (await server.call(pool, body=b"x" * (64 << 10))).status == 413
    assert not any(pool._idle.values()), "closed, not pooled"
    assert (await server.call(pool, body=b"{}")).status == 413
    assert sum(len(v) for v in pool._idle.values()) == 1, "a small request's error leaves a reusable connection"
    server.handler = ok
    assert (await server.call(pool, body=b"x" * (64 << 10))).status == 200
    assert server.connections == 2


async def test_idle_connections_are_swept_without_further_calls(server: Scripted) -> None:
    """A connection left idle past the keep-alive time is closed even when its origin is never called again."""
    pool = Http1Pool(keepalive_s=0.05)
    try:
        assert (await server.call(pool)).status == 200
        [idle] = [conn for conns in pool._idle.values() for conn in conns]
        await asyncio.wait_for(server.ended.wait(), 5)  # the server sees the client close it
        assert idle.closed and not pool._idle and pool._sweeper is None, "nothing idle: the sweeper stops"
    finally:
        pool.close()

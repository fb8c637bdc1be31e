"""The bare baseline: uvicorn (httptools, uvloop) + one aiohttp session forwarding POST /v1/chat/completions to an
upstream, JSON and SSE passed through as they come. No auth, no parsing, no accounting: the floor for a Python proxy.

    python -m bench.forwarder PORT UPSTREAM_BASE_URL [REDIS_URL]     # e.g. 8001 http://127.0.0.1:8000

With a REDIS_URL it is the floor for a proxy with shared state (BENCH_FORWARDER=redis): each request waits for one
Redis round trip before it is forwarded (a GET, where the gateway sends its limiter script and cache lookup) and
writes one command after the upstream answers, without waiting for its reply (where the gateway writes its cache
store, settle and spend), on the gateway's own lean client.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

from aigw.state.resp import RespClient

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_FORWARDED = (b"authorization", b"content-type")


class Forwarder:
    def __init__(self, upstream: str, redis_url: str = "") -> None:
        self.url = upstream.rstrip("/") + "/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None
        self.redis = RespClient(redis_url, command_timeout_s=1.0) if redis_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
                await self._forward(scope, receive, send)
            elif scope["path"] == "/healthz":
                await _respond(send, 200, b"ok", b"text/plain")
            else:
                await _respond(send, 404, b"", b"text/plain")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.session is not None
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        wanted = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _FORWARDED}
        if self.redis is not None:
            await self.redis.execute("GET", "bench:forwarder")
        async with self.session.post(self.url, data=b"".join(chunks), headers=wanted) as resp:
            ctype = resp.headers.get("content-type", "application/json").encode("latin-1")
            if not ctype.startswith(b"text/event-stream"):
                body = await resp.read()
                await self._write_after()
                await _respond(send, resp.status, body, ctype)
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ctype)]})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await self._write_after()  # where the gateway settles a stream: at its end
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write_after(self) -> None:
        """With Redis: one command written before the response ends, its reply not awaited."""
        if self.redis is not None:
            reply = await self.redis.submit("SET", "bench:forwarder", b"x", "EX", 60)
            reply.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _respond(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        Forwarder(upstream, sys.argv[3] if len(sys.argv) > 3 else ""),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

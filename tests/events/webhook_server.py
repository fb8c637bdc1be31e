"""A real webhook receiver on 127.0.0.1 for the tests: checks the HMAC signature, records batches, fails on demand."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from aiohttp import web


class WebhookReceiver:
    def __init__(self, secret: str | None) -> None:
        self.secret = secret.encode() if secret is not None else None
        self.batches: list[list[dict[str, Any]]] = []
        self.fail_with: int | None = None  # answer this status instead of accepting
        self.failures = 0
        self.bad_signatures = 0
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.headers.append(dict(request.headers))
        if self.secret is not None:
            # What a receiver must do: recompute over the exact bytes, compare in constant time.
            expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Aigw-Signature", ""), expected):
                self.bad_signatures += 1
                return web.Response(status=401)
        if self.fail_with is not None:
            self.failures += 1
            return web.Response(status=self.fail_with)
        doc = json.loads(body)
        assert doc["type"] == "aigw.usage.batch"
        self.batches.append(doc["events"])
        return web.Response(status=204)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b]

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks/aigw", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hooks/aigw?token=not-for-status-pages"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

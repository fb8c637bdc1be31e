"""Webhook sender: a batch of events per POST, signed with HMAC-SHA256 when the sink has a ``secret``.

The body is ``{"type": "aigw.usage.batch", "events": [event, ...]}``, assembled from the stored event bodies without
re-encoding them. The signature header is ``X-Aigw-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``.
Any 2xx accepts the whole batch; anything else (redirects included: a signed body is not replayed elsewhere) fails it
and the publisher retries with back-off.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from aigw.config.model import WebhookSink
from aigw.events.outbox import OutboxRow
from aigw.events.sinks import SendError

SIGNATURE_HEADER = "X-Aigw-Signature"
BATCH_TYPE = "aigw.usage.batch"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Aigw-Signature`` value for ``body``; receivers compare it with ``hmac.compare_digest``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def batch_body(rows: Sequence[OutboxRow]) -> bytes:
    return ('{"type":"' + BATCH_TYPE + '","events":[' + ",".join(r.body for r in rows) + "]}").encode()


class WebhookSender:
    def __init__(self, cfg: WebhookSink) -> None:
        self._url = cfg.url
        self._secret = cfg.secret.get_secret_value().encode() if cfg.secret is not None else None
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        self._limit = cfg.parallel
        self._session: aiohttp.ClientSession | None = None

    @property
    def target(self) -> str:
        # Drop any credentials or query string (a token in the URL) from what status pages show.
        parts = urlsplit(self._url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _get_session(self) -> aiohttp.ClientSession:
        # Its own pool, so a slow webhook never holds connections the upstream providers need.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._limit)
            )
        return self._session

    async def send(self, rows: Sequence[OutboxRow]) -> dict[int, str]:
        body = batch_body(rows)
        headers = {"Content-Type": "application/json", "User-Agent": "aigw-events/1"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            async with self._get_session().post(self._url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = str(exc).replace(self._url, self.target)  # the full URL may carry a token
            raise SendError(f"POST {self.target}: {type(exc).__name__}: {detail}") from exc
        if not 200 <= status < 300:
            raise SendError(f"POST {self.target}: HTTP {status}")
        return {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""Upstream: the only code that performs upstream HTTP. Owns no translation.

Per process (created in the app's lifespan): one ``aiohttp.ClientSession`` for streams and one lean HTTP/1.1 pool
(``http1.py``, ADR 0011) for every other exchange; foreign exceptions are mapped onto the gateway's error tree here
and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from aigw import __version__
from aigw.errors import InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from aigw.providers.base import (
    BatchEmbeddingsAdapter,
    ChatAdapter,
    ChatInput,
    Completion,
    EmbeddingsAdapter,
    EmbeddingsInput,
    EmbeddingsResult,
    Framing,
    Signer,
    StreamDecoder,
    StreamIdentity,
    UpstreamRequest,
)
from aigw.providers.framing import make_parser
from aigw.providers.http1 import ConnectFailed, Http1Pool, TimedOut
from aigw.providers.http1 import HttpError as LeanHttpError
from aigw.providers.sigv4 import host_header
from aigw.schema.usage import Usage

_USER_AGENT = f"aigw/{__version__}"
_MAX_ERROR_BODY = 64 * 1024
_EMBED_FANOUT = 8  # concurrent requests for one-text-per-call embedding APIs (bounded: upstream throttling)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    total_s: float  # non-streaming: whole exchange; streaming: the longest silence between two reads
    first_byte_s: float  # non-streaming: response headers; streaming: the first chunk
    stream_s: float  # a whole stream


@asynccontextmanager
async def deadline(provider: str, seconds: float, what: str) -> AsyncIterator[None]:
    """asyncio.timeout, reported as the gateway's UpstreamTimeout (which falls back and counts toward a 504)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise UpstreamTimeout(f"{provider} {what} within {seconds:g}s", provider=provider) from None


_Origin = tuple[str, str, int, str, str]  # scheme, host, port, Host header value, "scheme://netloc" prefix


def _lean_origin(base_url: str) -> _Origin | None:
    """Where the lean client connects for ``base_url``; None for what it does not serve (it is left to aiohttp):
    another scheme, userinfo, an unparsable port."""
    try:
        parts = urlsplit(base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return parts.scheme, parts.hostname, port, host_header(base_url), f"{parts.scheme}://{parts.netloc}"


def _redirected(provider: str, status: int) -> UpstreamError:
    # Never followed: a POST redirected to another place (or turned into a GET) is a configuration problem to see.
    return UpstreamError(
        f"{provider} answered with a redirect (HTTP {status}); set its base_url to the final location",
        upstream_status=502,
        provider=provider,
    )


@contextmanager
def map_transport_errors(provider: str) -> Iterator[None]:
    # Messages name the provider, never the URL: they reach tenants, who need not learn the internal topology.
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"{provider} did not answer in time", provider=provider) from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        raise UpstreamUnreachable(f"cannot connect to {provider}: {reason}", provider=provider) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamUnreachable(f"connection to {provider} broke ({type(exc).__name__})", provider=provider) from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{provider} request failed ({type(exc).__name__})", provider=provider) from None


@contextmanager
def map_decode_errors(provider: str) -> Iterator[None]:
    """An upstream body the adapter cannot read is the upstream's fault (502), never a gateway crash."""
    try:
        yield
    except UpstreamError:
        raise
    except Exception as exc:
        raise UpstreamError(
            f"{provider} sent a response the gateway cannot read ({type(exc).__name__})",
            upstream_status=502,
            provider=provider,
        ) from None


@contextmanager
def map_encode_errors() -> Iterator[None]:
    # orjson decodes up to 1024 levels but encodes only ~255: a legal-looking body can still fail to re-encode.
    try:
        yield
    except orjson.JSONEncodeError:
        raise InvalidRequest("The request is nested too deeply to forward (or holds unencodable values)") from None


class UpstreamStream:
    """An open upstream stream. Iterate for serialized OpenAI chunks; ``aclose`` always (it drops the
    connection if the body was not read to the end, which is how an upstream learns the client went away)."""

    def __init__(
        self, provider: str, resp: aiohttp.ClientResponse, decoder: StreamDecoder, framing: Framing, limit_s: float
    ) -> None:
        self._provider = provider
        self._resp = resp
        self.decoder = decoder
        self._parser = make_parser(framing)
        self._gen = self._read()
        # The whole-stream bound: one timer that closes the connection (cheaper than a timeout per read).
        self._limit_s = limit_s
        self._expired = False
        self._timer = asyncio.get_running_loop().call_later(limit_s, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._resp.close()

    @property
    def usage(self) -> Usage | None:
        return self.decoder.usage

    @property
    def response_model(self) -> str | None:
        return self.decoder.response_model

    @property
    def finish_reason(self) -> str | None:
        return self.decoder.finish_reason

    def __aiter__(self) -> AsyncIterator[list[bytes]]:
        """The chunks in batches: what one network read decoded to, so that they can leave in one write."""
        return self._gen

    async def first_batch(self) -> list[bytes]:
        """The commit point's read: the first chunk, with whatever came in its read, or the error that lets the
        caller fall back."""
        try:
            return await anext(self._gen)
        except StopAsyncIteration:
            raise UpstreamError(
                f"{self._provider} ended the stream without any chunk",
                upstream_status=502,
                provider=self._provider,
            ) from None

    async def _read(self) -> AsyncGenerator[list[bytes], None]:
        provider = self._provider
        try:
            with map_transport_errors(provider):
                async for data in self._resp.content.iter_any():
                    batch, error = self._decode(data)
                    if batch:
                        yield batch
                    if error is not None:
                        raise error
        except UpstreamError:
            if self._expired:
                raise UpstreamTimeout(
                    f"{provider} stream did not finish within {self._limit_s:g}s", provider=provider
                ) from None
            raise
        if self._expired:  # closed by the timer between two reads: the body "ended" early, it did not finish
            raise UpstreamTimeout(f"{provider} stream did not finish within {self._limit_s:g}s", provider=provider)
        batch, error = self._decode(None)
        if batch:
            yield batch
        if error is not None:
            raise error

    def _decode(self, data: bytes | None) -> tuple[list[bytes], UpstreamError | None]:
        """The chunks one network read decodes to (None: the end of the body), and the error that cut them short.
        The chunks before an error event in the same read still go out first, so where the commit point falls does
        not depend on how TCP happened to split the bytes."""
        batch: list[bytes] = []
        feed = self.decoder.feed
        try:
            with map_decode_errors(self._provider):
                for event in self._parser.feed(data) if data is not None else self._parser.close():
                    batch += feed(event)
                if data is None:
                    batch += self.decoder.finish()
        except UpstreamError as exc:
            return batch, exc
        return batch, None

    async def aclose(self) -> None:
        self._timer.cancel()
        try:
            await self._gen.aclose()
        finally:
            self._resp.close()


class Upstream:
    """One configured provider: name + adapter + signer + base URL + timeouts."""

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        base_url: str,
        adapter: ChatAdapter,
        signer: Signer | None,
        timeouts: Timeouts,
        session: aiohttp.ClientSession,
        pool: Http1Pool | None = None,
    ) -> None:
        """``pool`` serves the non-streaming exchanges (streams use ``session``); None: ``session`` serves all."""
        self.name = name
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self.adapter = adapter
        self._signer = signer
        self._session = session
        self._origin = _lean_origin(self.base_url) if pool is not None else None
        self._pool = pool if self._origin is not None else None
        self.timeouts = timeouts
        # Adds the current trace context (traceparent) to each request; None when tracing is off (app.py sets it).
        self.trace_inject: Callable[[dict[str, str]], None] | None = None
        # Streamed: aiohttp bounds connecting and each silence between reads; the first chunk is bounded with an
        # asyncio timeout (it spans several reads) and the whole stream with one timer (UpstreamStream).
        # Non-streamed, on aiohttp (no lean pool, or an origin it does not serve): aiohttp's own timers bound
        # connect, each read (the first one is the response headers) and the whole exchange. On the lean pool
        # (http1.py): connect, the first byte and the whole exchange, with one timer.
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total_s, sock_connect=timeouts.connect_s, sock_read=timeouts.first_byte_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.total_s
        )

    @property
    def embeddings(self) -> EmbeddingsAdapter | None:
        a = self.adapter
        return a if hasattr(a, "encode_embeddings") else None  # type: ignore[return-value]

    def _prepare(self, up: UpstreamRequest) -> tuple[str, dict[str, str]]:
        url = self.base_url + up.path
        headers = {"user-agent": _USER_AGENT, **up.headers}
        if self.trace_inject is not None:  # before signing: SigV4 signs only its own headers, so either order works
            self.trace_inject(headers)
        if self._signer is not None:
            headers = self._signer.sign(up.method, url, headers, up.body)
        return url, headers

    async def _send(self, up: UpstreamRequest, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        url, headers = self._prepare(up)
        with map_transport_errors(self.name):
            # encoded=True: send the path exactly as signed (yarl would otherwise turn Bedrock's %3A back into ':').
            resp = await self._session.request(
                up.method, URL(url, encoded=True), data=up.body, headers=headers, timeout=timeout, allow_redirects=False
            )
            if 300 <= resp.status < 400:
                resp.close()
                raise _redirected(self.name, resp.status)
            if resp.status >= 400:
                try:
                    body = await resp.content.read(_MAX_ERROR_BODY)
                finally:
                    resp.close()
                with map_decode_errors(self.name):
                    err = self.adapter.decode_error(resp.status, body, resp.headers)
                err.provider = self.name
                if resp.status in (401, 403):
                    # The upstream rejected the gateway's own credentials; its message may quote part of the key.
                    err.message = f"{self.name} rejected the gateway's credentials (HTTP {resp.status})"
                raise err
        return resp

    @property
    def attempt_bound_s(self) -> float:
        """The longest one attempt can take before its own timeouts end it (the chain's deadline need not)."""
        t = self.timeouts
        return max(t.total_s, t.first_byte_s) + t.connect_s

    async def _read(self, up: UpstreamRequest) -> bytes:
        if self._pool is not None and self._origin is not None:
            url, headers = self._prepare(up)
            if url.startswith(self._origin[4]):  # the request target is what follows the origin, as signed
                return await self._read_lean(up, self._pool, self._origin, url, headers)
        resp = await self._send(up, self._timeout)
        with map_transport_errors(self.name):
            try:
                return await resp.read()
            finally:
                resp.release()

    async def _read_lean(
        self, up: UpstreamRequest, pool: Http1Pool, origin: _Origin, url: str, headers: dict[str, str]
    ) -> bytes:
        """``_read`` on the lean client (http1.py): the same bounds, errors and messages as on aiohttp."""
        scheme, host, port, host_value, prefix = origin
        if "host" not in headers:  # SigV4 sets (and signs) it; the same value
            headers["host"] = host_value
        t = self.timeouts
        name = self.name
        try:
            resp = await pool.request(
                up.method, scheme, host, port, url[len(prefix):], headers, up.body,
                connect_s=t.connect_s, first_byte_s=t.first_byte_s, total_s=t.total_s,
            )  # fmt: skip
        except TimedOut:
            raise UpstreamTimeout(f"{name} did not answer in time", provider=name) from None
        except ConnectFailed as exc:
            raise UpstreamUnreachable(f"cannot connect to {name}: {exc}", provider=name) from None
        except LeanHttpError as exc:
            raise UpstreamUnreachable(f"connection to {name} broke ({exc})", provider=name) from None
        except ValueError as exc:  # a line break or a non-latin-1 character in a configured header: never sent
            raise UpstreamUnreachable(f"{name} request not sent ({exc})", provider=name) from None
        if 300 <= resp.status < 400:
            raise _redirected(name, resp.status)
        if resp.status >= 400:
            with map_decode_errors(name):
                err = self.adapter.decode_error(resp.status, resp.body[:_MAX_ERROR_BODY], resp.headers)
            err.provider = name
            if resp.status in (401, 403):
                # The upstream rejected the gateway's own credentials; its message may quote part of the key.
                err.message = f"{name} rejected the gateway's credentials (HTTP {resp.status})"
            raise err
        return resp.body

    async def chat(self, chat: ChatInput, model: str, ident: StreamIdentity) -> Completion:
        with map_encode_errors():
            up = self.adapter.encode_chat(chat, model=model, stream=False)
        body = await self._read(up)
        with map_decode_errors(self.name):
            return self.adapter.decode_chat(
                body, model=model, ident=ident, single_tool_call=chat.request.parallel_tool_calls is False
            )

    async def open_stream(
        self, chat: ChatInput, model: str, ident: StreamIdentity, *, include_usage: bool
    ) -> tuple[UpstreamStream, list[bytes]]:
        """Open a stream and read its first chunk (the commit point): every failure up to here is an ordinary
        error the caller may fall back on. Returns the stream and its first batch (that chunk and what came with
        it)."""
        with map_encode_errors():
            up = self.adapter.encode_chat(chat, model=model, stream=True)
        t = self.timeouts
        stream: UpstreamStream | None = None
        try:
            async with deadline(self.name, t.first_byte_s, "sent no first chunk"):
                resp = await self._send(up, self._stream_timeout)
                decoder = self.adapter.stream_decoder(
                    model=model,
                    include_usage=include_usage,
                    ident=ident,
                    single_tool_call=chat.request.parallel_tool_calls is False,
                )
                stream = UpstreamStream(self.name, resp, decoder, self.adapter.framing, t.stream_s)
                first = await stream.first_batch()
        except BaseException:
            if stream is not None:
                await asyncio.shield(stream.aclose())
            raise
        return stream, first

    async def embed(self, emb: EmbeddingsInput, model: str, encoding_format: str) -> EmbeddingsResult:
        batch: BatchEmbeddingsAdapter | None = (
            self.adapter if hasattr(self.adapter, "encode_embeddings_batch") else None  # type: ignore[assignment]
        )
        if batch is not None:
            with map_encode_errors():
                ups = batch.encode_embeddings_batch(emb, model=model)
            limit = asyncio.Semaphore(_EMBED_FANOUT)

            async def one(up: UpstreamRequest) -> bytes:
                async with limit:
                    return await self._read(up)

            bodies = await asyncio.gather(*(one(up) for up in ups))
            with map_decode_errors(self.name):
                return batch.decode_embeddings_batch(bodies, model=model, encoding_format=encoding_format)
        adapter = self.embeddings
        if adapter is None:
            raise UpstreamError(f"provider {self.name} has no embeddings API", upstream_status=400)
        with map_encode_errors():
            up = adapter.encode_embeddings(emb, model=model)
        body = await self._read(up)
        with map_decode_errors(self.name):
            return adapter.decode_embeddings(body, model=model, encoding_format=encoding_format)


def make_session() -> aiohttp.ClientSession:
    # limit=0: concurrency is bounded by the server, not by a pool queue that would add hidden latency.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    # No cookie jar: the session is shared by every tenant, so a cookie one upstream response sets (providers' CDNs
    # do) must not ride along on other tenants' requests.
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=True, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
    )


async def close_session(session: aiohttp.ClientSession) -> None:
    await session.close()
    await asyncio.sleep(0)  # let the connector's transports finish closing


@dataclass(frozen=True, slots=True)
class HttpClients:
    """The process's upstream HTTP: aiohttp for streams, the lean pool for everything else (ADR 0011)."""

    session: aiohttp.ClientSession
    pool: Http1Pool


def make_clients() -> HttpClients:
    return HttpClients(make_session(), Http1Pool(keepalive_s=30))


async def close_clients(clients: HttpClients) -> None:
    clients.pool.close()
    await close_session(clients.session)

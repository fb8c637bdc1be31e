"""Gateway: the use case. Chat, streamed chat and embeddings for an authenticated principal:
resolve the model → call the upstream → meter. Imports no web framework.

Fallback along a chain of targets, breakers, limits and the cache plug in here (issues 4-6); today an alias is
served by its first target.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from aigw.errors import AllTargetsFailed, ClientDisconnected, GatewayError, UpstreamError
from aigw.metering import UsageRecorder
from aigw.providers.base import ChatInput, EmbeddingsInput, StreamIdentity
from aigw.providers.transport import Upstream, UpstreamStream
from aigw.routing import Router, Target
from aigw.schema.usage import Usage
from aigw.store.usage import UsageRecord
from aigw.tenancy import Principal

CLIENT_CLOSED = ClientDisconnected.status


@dataclass(slots=True)
class CallContext:
    principal: Principal
    request_id: str
    model: str  # as the client asked (alias or provider/model)
    started: float  # perf_counter at arrival
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Served:
    body: bytes
    provider: str


def new_identity() -> StreamIdentity:
    return StreamIdentity(id="chatcmpl-" + os.urandom(12).hex(), created=int(time.time()))


class Gateway:
    def __init__(self, router: Router, upstreams: Mapping[str, Upstream], recorder: UsageRecorder) -> None:
        self.router = router
        self.upstreams = upstreams
        self._recorder = recorder

    def _target(self, model: str) -> tuple[Target, Upstream]:
        target = self.router.resolve(model)[0]
        return target, self.upstreams[target.provider]

    def _record(
        self,
        ctx: CallContext,
        *,
        status: int,
        target: Target | None,
        usage: Usage | None,
        error: GatewayError | None = None,
    ) -> None:
        u = usage or Usage()
        self._recorder.record(
            UsageRecord(
                request_id=ctx.request_id,
                created_at=datetime.now(UTC),
                tenant_id=ctx.principal.tenant_id,
                key_id=ctx.principal.key_id,
                model=ctx.model,
                provider=target.provider if target else None,
                upstream_model=target.model if target else None,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens,
                cache_write_tokens=u.cache_write_tokens,
                cost_usd=None,  # priced from the table with issue 5; null = not priced, never a made-up 0
                status=status,
                latency_ms=(time.perf_counter() - ctx.started) * 1000.0,
                stream=ctx.stream,
                cache_hit=False,
                error_type=error.error_type if error else None,
            )
        )

    @staticmethod
    def _as_final(target: Target, err: UpstreamError) -> UpstreamError:
        # Failures that would fall through to the next target end the chain: report them as the chain's result.
        return AllTargetsFailed([(target.key, err)]) if err.falls_back else err

    async def chat(self, ctx: CallContext, chat: ChatInput) -> Served:
        target: Target | None = None
        try:
            target, upstream = self._target(ctx.model)
            try:
                completion = await upstream.chat(chat, target.model, new_identity())
            except UpstreamError as err:
                raise self._as_final(target, err) from None
        except GatewayError as err:
            self._record(ctx, status=err.http_status, target=target, usage=None, error=err)
            raise
        except asyncio.CancelledError:  # the client went away (api.disconnect): still one ledger row
            self._record(ctx, status=CLIENT_CLOSED, target=target, usage=None)
            raise
        self._record(ctx, status=200, target=target, usage=completion.usage)
        return Served(completion.body, target.provider)

    async def chat_stream(self, ctx: CallContext, chat: ChatInput) -> CommittedStream:
        """Open the upstream stream and read up to its first chunk (the commit point): every failure before it
        is still an ordinary error response; after it, failures become an in-stream error event."""
        target: Target | None = None
        try:
            target, upstream = self._target(ctx.model)
            stream: UpstreamStream | None = None
            try:
                stream = await upstream.open_stream(
                    chat, target.model, new_identity(), include_usage=chat.request.wants_usage
                )
                first = await stream.next_chunk()
            except UpstreamError as err:
                if stream is not None:
                    await stream.aclose()
                raise self._as_final(target, err) from None
            except asyncio.CancelledError:
                if stream is not None:
                    await asyncio.shield(stream.aclose())
                raise
        except GatewayError as err:
            self._record(ctx, status=err.http_status, target=target, usage=None, error=err)
            raise
        except asyncio.CancelledError:
            self._record(ctx, status=CLIENT_CLOSED, target=target, usage=None)
            raise
        return CommittedStream(self, ctx, target, stream, first)

    async def embed(self, ctx: CallContext, emb: EmbeddingsInput) -> Served:
        target: Target | None = None
        try:
            target, upstream = self._target(ctx.model)
            try:
                result = await upstream.embed(emb, target.model, emb.request.encoding_format or "float")
            except UpstreamError as err:
                raise self._as_final(target, err) from None
        except GatewayError as err:
            self._record(ctx, status=err.http_status, target=target, usage=None, error=err)
            raise
        except asyncio.CancelledError:
            self._record(ctx, status=CLIENT_CLOSED, target=target, usage=None)
            raise
        self._record(ctx, status=200, target=target, usage=result.usage)
        return Served(result.body, target.provider)


class CommittedStream:
    """A stream past its commit point. Iterate for chunk JSON; ``close`` exactly once with the outcome, which
    closes the upstream and meters the usage seen so far (whether the stream completed, failed or was abandoned)."""

    def __init__(self, gw: Gateway, ctx: CallContext, target: Target, stream: UpstreamStream, first: bytes) -> None:
        self._gw = gw
        self._ctx = ctx
        self.target = target
        self._stream = stream
        self._first: bytes | None = first

    @property
    def provider(self) -> str:
        return self.target.provider

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for chunk in self._stream:
            yield chunk

    async def close(self, *, status: int, error: GatewayError | None = None) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._gw._record(self._ctx, status=status, target=self.target, usage=self._stream.usage, error=error)

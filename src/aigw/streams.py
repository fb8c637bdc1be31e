"""The streams the gateway hands to the SSE writer: an upstream stream past its commit point, or a cached answer
replayed. Both are iterated for chunk JSON and closed exactly once with the outcome, which meters the request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

import msgspec

from aigw.breaker import Outcome, Permit
from aigw.cache_stream import StreamAssembler, replay_chunks
from aigw.caching import CachedAnswer, CachePlan, ResponseCache
from aigw.errors import GatewayError, UpstreamError
from aigw.observe import Attempt
from aigw.providers.base import StreamIdentity
from aigw.providers.transport import UpstreamStream
from aigw.routing import Target

if TYPE_CHECKING:
    from aigw.calls import CallContext
    from aigw.gateway import Gateway

__all__ = ["CacheFill", "ChatStream", "CommittedStream", "ReplayStream"]


class ChatStream(Protocol):
    provider: str
    attempts: int

    def batches(self) -> AsyncIterator[list[bytes]]:
        """Chunk JSON, in batches of what is at hand at once (one network read): each batch leaves in one write."""
        ...

    async def close(self, *, status: int, error: GatewayError | None = None) -> None: ...


class CacheFill:
    """Assembles a streamed miss and stores it once the upstream has ended it normally: never a partial or failed
    stream. Stored before ``[DONE]`` is sent, so the entry is readable once the response has completed."""

    __slots__ = ("_assembler", "_cache", "_ident", "_plan")

    def __init__(self, cache: ResponseCache, plan: CachePlan, ident: StreamIdentity) -> None:
        self._cache = cache
        self._plan = plan
        self._ident = ident
        self._assembler = StreamAssembler()

    def feed(self, chunk: bytes) -> None:
        self._assembler.feed(chunk)

    async def finish(self, target: Target, stream: UpstreamStream) -> None:
        usage = stream.usage
        if usage is None or not self._assembler.complete:
            return  # no usage reported (a hit's saving would be unknown) or not a whole answer: not stored
        body = self._assembler.completion(self._ident, msgspec.to_builtins(usage.to_openai()))
        await self._cache.put(
            self._plan, provider=target.provider, upstream_model=target.model, usage=usage, completion=body
        )


class CommittedStream:
    """A stream past its commit point. ``close`` closes the upstream and meters the usage seen so far (whether the
    stream completed, failed or was abandoned), and gives the target's circuit its verdict."""

    def __init__(
        self,
        gw: Gateway,
        ctx: CallContext,
        target: Target,
        stream: UpstreamStream,
        first: list[bytes],
        attempts: int,
        permit: Permit | None,
        fill: CacheFill | None = None,
        attempt: Attempt | None = None,
    ) -> None:
        self._attempt = attempt
        self.attempts = attempts
        self._permit = permit
        self._gw = gw
        self._ctx = ctx
        self.target = target
        self.provider = target.provider
        self._stream = stream
        self._first: list[bytes] | None = first  # the commit point's batch
        self._fill = fill
        # Content capture (opt-in) records the answer on the attempt's span: assembled as the cache does.
        self._said = StreamAssembler() if attempt is not None and attempt.captures_content else None

    async def batches(self) -> AsyncIterator[list[bytes]]:
        fill = self._fill
        said = self._said
        if self._first is not None:
            batch, self._first = self._first, None
            self._feed(batch, fill, said)
            yield batch
        async for batch in self._stream:
            self._feed(batch, fill, said)
            yield batch
        if fill is not None:  # only reached when the upstream ended the stream normally
            self._fill = None
            await fill.finish(self.target, self._stream)

    @staticmethod
    def _feed(batch: list[bytes], fill: CacheFill | None, said: StreamAssembler | None) -> None:
        for chunk in batch:
            if fill is not None:
                fill.feed(chunk)
            if said is not None:
                said.feed(chunk)

    async def close(self, *, status: int, error: GatewayError | None = None) -> None:
        try:
            await self._stream.aclose()
        finally:
            attempt = self._attempt
            if attempt is not None:
                self._ctx.upstream_s += attempt.charge()
                stream = self._stream
                attempt.finish(
                    usage=stream.usage,
                    response_model=stream.response_model,
                    finish_reason=stream.finish_reason,
                    error=error,
                    choices=self._said.choices() if self._said is not None else None,
                )
            self._gw._record(
                self._ctx, status=status, target=self.target, usage=self._stream.usage, error=error, responded=True
            )
            if self._permit is not None:  # the target's verdict is the whole stream's, not its first chunk's
                permit, self._permit = self._permit, None
                if status == 200:
                    outcome = Outcome.SUCCESS
                elif isinstance(error, UpstreamError) and error.falls_back:
                    outcome = Outcome.FAILURE
                else:
                    outcome = Outcome.NEUTRAL  # the client left, or the gateway failed: no verdict
                await self._gw.breaker.release(permit, outcome, error.message if error else None)


class ReplayStream:
    """A cached answer served as a stream: no upstream, no attempts."""

    attempts = 0

    def __init__(
        self, gw: Gateway, ctx: CallContext, hit: CachedAnswer, ident: StreamIdentity, *, include_usage: bool
    ) -> None:
        self._gw = gw
        self._ctx = ctx
        self._hit = hit
        self.provider = hit.provider
        self._chunks = replay_chunks(hit.completion, ident, include_usage)

    async def batches(self) -> AsyncIterator[list[bytes]]:
        yield list(self._chunks)  # all at hand: one write

    async def close(self, *, status: int, error: GatewayError | None = None) -> None:
        target = Target(self._hit.provider, self._hit.upstream_model)
        gw, ctx = self._gw, self._ctx
        gw._record(ctx, status=status, target=target, usage=None, error=error, hit=self._hit, responded=True)

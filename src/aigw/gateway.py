"""Gateway: the use case. Chat, streamed chat and embeddings for an authenticated principal:
resolve the model → run the chain of targets (fallback.py) → meter. Imports no web framework.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from aigw.breaker import Outcome, Permit
from aigw.errors import BudgetExceeded, ClientDisconnected, GatewayError, UpstreamError
from aigw.fallback import Chain, ChainFailed
from aigw.fallback import Served as ServedBy
from aigw.limits import headers_for, refusal
from aigw.metering import UsageRecorder
from aigw.pricing import PriceTable
from aigw.providers.base import ChatInput, Completion, EmbeddingsInput, EmbeddingsResult, StreamIdentity
from aigw.providers.transport import Upstream, UpstreamStream
from aigw.ratelimit import LimitStore, Reservation
from aigw.routing import Router, Target
from aigw.schema.usage import Usage
from aigw.state import BreakerStore
from aigw.state.budgets import BudgetStore, month_of
from aigw.store.usage import UsageRecord
from aigw.tenancy import Principal

CLIENT_CLOSED = ClientDisconnected.status
T = TypeVar("T")


@dataclass(slots=True)
class CallContext:
    principal: Principal
    request_id: str
    model: str  # as the client asked (alias or provider/model)
    started: float  # perf_counter at arrival
    stream: bool = False
    token_estimate: int = 0  # the TPM reservation (aigw.limits); only computed when the tenant has a TPM limit
    limit_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, for every response
    reservation: Reservation | None = None


@dataclass(frozen=True, slots=True)
class Served:
    body: bytes
    provider: str
    attempts: int  # targets called (x-aigw-attempts)
    cost_usd: Decimal | None = None  # None: the model has no price


def new_identity() -> StreamIdentity:
    return StreamIdentity(id="chatcmpl-" + os.urandom(12).hex(), created=int(time.time()))


class Gateway:
    def __init__(
        self,
        router: Router,
        upstreams: Mapping[str, Upstream],
        recorder: UsageRecorder,
        breaker: BreakerStore,
        *,
        request_timeout_s: float = 120.0,
        prices: PriceTable | None = None,
        limits: LimitStore | None = None,
        budgets: BudgetStore | None = None,
    ) -> None:
        self.limits = limits
        self.budgets = budgets
        self._background: set[asyncio.Task[None]] = set()
        self.prices = prices
        self.unpriced = 0  # requests whose model has no price (cost recorded as null, never a made-up 0)
        self.router = router
        self.upstreams = upstreams
        self.breaker = breaker
        self._recorder = recorder
        self._chain = Chain(upstreams, breaker)
        self._request_timeout_s = request_timeout_s

    def _record(
        self,
        ctx: CallContext,
        *,
        status: int,
        target: Target | None,
        usage: Usage | None,
        error: GatewayError | None = None,
    ) -> Decimal | None:
        u = usage or Usage()
        cost = self._cost(target, u) if usage is not None else Decimal(0)
        reservation, ctx.reservation = ctx.reservation, None
        if reservation is not None or (cost and self.budgets is not None):
            self._spawn(self._after(ctx.principal.tenant_id, reservation, u.total_tokens, cost))
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
                cost_usd=cost,
                status=status,
                latency_ms=(time.perf_counter() - ctx.started) * 1000.0,
                stream=ctx.stream,
                cache_hit=False,
                error_type=error.error_type if error else None,
            )
        )
        return cost

    async def _after(self, tenant: str, reservation: Reservation | None, tokens: int, cost: Decimal | None) -> None:
        """One task per request for the bookkeeping after it: settle the TPM reservation, add to the month's spend."""
        if reservation is not None and self.limits is not None:
            await self.limits.settle(reservation, tokens)
        if cost and self.budgets is not None:
            await self.budgets.add(tenant, month_of(datetime.now(UTC)), cost)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Bookkeeping after the response (TPM settle, spend totals): a Redis round trip the client need not wait
        for. The set keeps the tasks referenced until they finish."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _admit(self, ctx: CallContext) -> None:
        """Budget, then RPM/TPM limits, before anything else is done for the request (no upstream is called)."""
        p = ctx.principal
        if p.monthly_budget_usd is not None and self.budgets is not None:
            spent = await self.budgets.spent(p.tenant_id, month_of(datetime.now(UTC)))
            if spent >= p.monthly_budget_usd:
                raise BudgetExceeded(
                    f"This tenant's monthly budget of ${p.monthly_budget_usd} is spent (${spent:.6f} this month, UTC); "
                    "raise monthly_budget_usd or wait for the next month"
                )
        if self.limits is None or (p.rate_limit_rpm is None and p.rate_limit_tpm is None):
            return
        verdict = await self.limits.check(p.tenant_id, p.rate_limit_rpm, p.rate_limit_tpm, ctx.token_estimate)
        ctx.limit_headers = headers_for(verdict)
        if not verdict.allowed:
            raise refusal(verdict, ctx.limit_headers)
        ctx.reservation = verdict.reservation

    def _cost(self, target: Target | None, usage: Usage) -> Decimal | None:
        if self.prices is None or target is None:
            return None
        cost = self.prices.cost(self.upstreams[target.provider].kind, target.model, usage)
        if cost is None:
            self.unpriced += 1
        return cost

    async def _run(
        self, ctx: CallContext, call: Callable[[Target, Upstream], Awaitable[T]], *, hold_on_success: bool = False
    ) -> ServedBy[T]:
        """Resolve the model and run the chain; every failure is metered here, once, and re-raised with the
        number of targets tried in its headers."""
        target: Target | None = None
        try:
            await self._admit(ctx)
            targets = self.router.resolve(ctx.model)
            deadline = asyncio.get_running_loop().time() + self._request_timeout_s
            try:
                return await self._chain.run(targets, deadline, call, hold_on_success=hold_on_success)
            except ChainFailed as failed:
                target = failed.target
                failed.error.headers["x-aigw-attempts"] = str(failed.attempts)
                raise failed.error from None
        except GatewayError as err:
            for k, v in ctx.limit_headers.items():
                err.headers.setdefault(k, v)
            self._record(ctx, status=err.http_status, target=target, usage=None, error=err)
            raise
        except asyncio.CancelledError:  # the client went away (api.disconnect): still one ledger row
            self._record(ctx, status=CLIENT_CLOSED, target=target, usage=None)
            raise

    async def chat(self, ctx: CallContext, chat: ChatInput) -> Served:
        async def call(target: Target, upstream: Upstream) -> Completion:
            return await upstream.chat(chat, target.model, new_identity())

        served = await self._run(ctx, call)
        cost = self._record(ctx, status=200, target=served.target, usage=served.value.usage)
        return Served(served.value.body, served.target.provider, served.attempts, cost)

    async def chat_stream(self, ctx: CallContext, chat: ChatInput) -> CommittedStream:
        """Open a stream on the first target that delivers a first chunk (the commit point): every failure before
        it is an ordinary error and falls back; after it, failures become an in-stream error event."""
        ident = new_identity()  # one id for the stream, whichever target ends up serving it

        async def call(target: Target, upstream: Upstream) -> tuple[UpstreamStream, bytes]:
            return await upstream.open_stream(chat, target.model, ident, include_usage=chat.request.wants_usage)

        served = await self._run(ctx, call, hold_on_success=True)
        stream, first = served.value
        return CommittedStream(self, ctx, served.target, stream, first, served.attempts, served.permit)

    async def embed(self, ctx: CallContext, emb: EmbeddingsInput) -> Served:
        fmt = emb.request.encoding_format or "float"

        async def call(target: Target, upstream: Upstream) -> EmbeddingsResult:
            return await upstream.embed(emb, target.model, fmt)

        served = await self._run(ctx, call)
        cost = self._record(ctx, status=200, target=served.target, usage=served.value.usage)
        return Served(served.value.body, served.target.provider, served.attempts, cost)


class CommittedStream:
    """A stream past its commit point. Iterate for chunk JSON; ``close`` exactly once with the outcome, which
    closes the upstream and meters the usage seen so far (whether the stream completed, failed or was abandoned)."""

    def __init__(
        self,
        gw: Gateway,
        ctx: CallContext,
        target: Target,
        stream: UpstreamStream,
        first: bytes,
        attempts: int,
        permit: Permit | None,
    ) -> None:
        self.attempts = attempts
        self._permit = permit
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
            if self._permit is not None:  # the target's verdict is the whole stream's, not its first chunk's
                permit, self._permit = self._permit, None
                if status == 200:
                    outcome = Outcome.SUCCESS
                elif isinstance(error, UpstreamError) and error.falls_back:
                    outcome = Outcome.FAILURE
                else:
                    outcome = Outcome.NEUTRAL  # the client left, or the gateway failed: no verdict
                await self._gw.breaker.release(permit, outcome, error.message if error else None)

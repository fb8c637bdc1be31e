"""Gateway: the use case. Chat, streamed chat and embeddings for an authenticated principal:
resolve the model → run the chain of targets (fallback.py) → meter. Imports no web framework.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from aigw.caching import CachedAnswer, CachePlan, ResponseCache
from aigw.calls import CallContext, Routing, Served
from aigw.config.model import AliasCache
from aigw.errors import BudgetExceeded, ClientDisconnected, GatewayError
from aigw.fallback import Chain, ChainFailed
from aigw.fallback import Served as ServedBy
from aigw.ids import hex_id
from aigw.limits import headers_for, refusal
from aigw.metering import UsageRecorder
from aigw.observe import Attempt, Observer
from aigw.pricing import PriceTable
from aigw.providers.base import ChatInput, Completion, EmbeddingsInput, EmbeddingsResult, StreamIdentity
from aigw.providers.transport import Upstream, UpstreamStream
from aigw.ratelimit import LimitStore
from aigw.routing import Router, Target
from aigw.schema.usage import Usage
from aigw.state import BreakerStore
from aigw.state.budgets import BudgetStore, month_of
from aigw.store.usage import UsageRecord
from aigw.streams import CacheFill, ChatStream, CommittedStream, ReplayStream

CLIENT_CLOSED = ClientDisconnected.status
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Booked:
    """What the ledger row and the metrics of a finished request need, captured when it finished."""

    ctx: CallContext
    status: int
    target: Target | None
    usage: Usage
    cost: Decimal | None
    saved: Decimal | None
    hit: bool
    error: GatewayError | None
    ended: float  # perf_counter when the request was finished (its latency ends there, not at the booking)


def new_identity() -> StreamIdentity:
    return StreamIdentity(id="chatcmpl-" + hex_id(12), created=int(time.time()))


class _TokensRefused(Exception):
    """A speculative admission refused for tokens alone (``Gateway._enter``): not yet a refusal."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


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
        cache: ResponseCache | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.observer = observer
        self.limits = limits
        self.budgets = budgets
        self.cache = cache
        self._background: set[asyncio.Task[None]] = set()
        self.unpriced = 0  # requests whose model has no price (cost recorded as null, never a made-up 0)
        self.breaker = breaker
        self._recorder = recorder
        self.routing = Routing(router, upstreams, prices, Chain(upstreams, breaker))
        self._request_timeout_s = request_timeout_s

    def reconfigure(
        self,
        router: Router,
        upstreams: Mapping[str, Upstream],
        prices: PriceTable,
        cache_aliases: Mapping[str, AliasCache],
    ) -> None:
        """Swap in a reloaded config (reload.py). Requests already running keep what they started with."""
        self.routing = Routing(router, upstreams, prices, Chain(upstreams, self.breaker))
        if self.cache is not None:
            self.cache.aliases = cache_aliases

    @property
    def router(self) -> Router:
        return self.routing.router

    @property
    def upstreams(self) -> Mapping[str, Upstream]:
        return self.routing.upstreams

    @property
    def prices(self) -> PriceTable | None:
        return self.routing.prices

    def _record(
        self,
        ctx: CallContext,
        *,
        status: int,
        target: Target | None,
        usage: Usage | None,
        error: GatewayError | None = None,
        hit: CachedAnswer | None = None,
        responded: bool = False,
    ) -> Decimal | None:
        """One ledger row for the request. A cache hit costs nothing and uses no upstream tokens; what it saved is
        its stored usage at today's prices. ``responded``: the response is over already (a stream's end), so
        nothing is gained by booking later."""
        u = usage or Usage()
        saved: Decimal | None = None
        if hit is not None:
            cost: Decimal | None = Decimal(0)
            saved = self._price(ctx, target, hit.usage)
        else:
            cost = self._cost(ctx, target, u) if usage is not None else Decimal(0)
        reservation, ctx.reservation = ctx.reservation, None
        # The ledger row, the metrics and the access line wait for the next turn of the loop, after the response
        # has been written in this one: ~10-25 us a request that the client no longer waits for. Still before
        # anything that arrives later (a callback queued now runs before the loop's next I/O), and booked first:
        # nothing below may cost the request its row.
        booked = _Booked(ctx, status, target, u, cost, saved, hit is not None, error, time.perf_counter())
        if responded:
            self._book(booked)
        else:
            asyncio.get_running_loop().call_soon(self._book, booked)
        # What the next request may depend on happens now: the TPM settle and the spend (a tenant's next request
        # must see them), and the span's attributes (the span ends with the response). The settle and the spend are
        # queued without a task where the store can, and leave in the same write as the cache store's SET.
        limits = self.limits
        if reservation is not None and limits is not None and not limits.settle_soon(reservation, u.total_tokens):
            self._spawn(limits.settle(reservation, u.total_tokens))
        if cost and self.budgets is not None:
            tenant, month = ctx.principal.tenant_id, month_of(datetime.now(UTC))
            if not self.budgets.add_soon(tenant, month, cost):
                self._spawn(self.budgets.add(tenant, month, cost))
        if self.observer is not None:
            self.observer.request_span(ctx.principal.tenant_id, u, cost, ctx.cache, error)
        return cost

    def _book(self, b: _Booked) -> None:
        """The request's ledger row, metrics and access line (after its response: ``_record``)."""
        ctx, target, u = b.ctx, b.target, b.usage
        duration_s = b.ended - ctx.started
        error_type = b.error.error_type if b.error else None
        self._recorder.record(
            UsageRecord(
                request_id=ctx.request_id,
                created_at=datetime.now(UTC),
                tenant_id=ctx.principal.tenant_id,
                key_id=ctx.principal.key_id,
                # As long as the columns hold: the client names the model (a 404 for a long name is still a row).
                model=ctx.model[:200],
                provider=target.provider if target else None,
                upstream_model=target.model[:200] if target else None,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens,
                cache_write_tokens=u.cache_write_tokens,
                cost_usd=b.cost,
                status=b.status,
                latency_ms=duration_s * 1000.0,
                stream=ctx.stream,
                cache_hit=b.hit,
                error_type=error_type,
                cache=ctx.cache,
                saved_cost_usd=b.saved,
            )
        )
        if self.observer is not None:
            self.observer.request(
                request_id=ctx.request_id,
                tenant=ctx.principal.tenant_id,
                model=ctx.model,
                provider=target.provider if target else None,
                status=b.status,
                cache=ctx.cache,
                stream=ctx.stream,
                duration_s=duration_s,
                upstream_s=ctx.upstream_s,
                usage=u,
                cost=b.cost,
                attempts=ctx.attempts,
                error_type=error_type,
            )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Bookkeeping after the response (TPM settle, spend totals) when the store cannot queue it at once (redis-py,
        no live connection): a Redis round trip the client need not wait for. The set keeps the tasks referenced
        until they finish."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _admit(self, ctx: CallContext, *, cached: bool = False, speculative: bool = False) -> None:
        """Budget, then RPM/TPM limits, before anything else is done for the request (no upstream is called).
        An answer from the cache counts against RPM only: it uses no tokens (issue 6)."""
        p = ctx.principal
        if p.monthly_budget_usd is not None and self.budgets is not None:
            spent = await self.budgets.spent(p.tenant_id, month_of(datetime.now(UTC)))
            if spent >= p.monthly_budget_usd:
                self._rejected(p.tenant_id, "budget")
                raise BudgetExceeded(
                    f"This tenant's monthly budget of ${p.monthly_budget_usd} is spent (${spent:.6f} this month, UTC); "
                    "raise monthly_budget_usd or wait for the next month"
                )
        tpm = None if cached else p.rate_limit_tpm
        if self.limits is None or (p.rate_limit_rpm is None and tpm is None):
            return
        verdict = await self.limits.check(p.tenant_id, p.rate_limit_rpm, tpm, 0 if cached else ctx.token_estimate)
        ctx.limit_headers = headers_for(verdict)
        if not verdict.allowed:
            tokens_refused = verdict.tokens is not None and not verdict.tokens.allowed
            err = refusal(verdict, ctx.limit_headers)
            if speculative and tokens_refused and (verdict.requests is None or verdict.requests.allowed):
                raise _TokensRefused(err)  # a cache hit would not need the tokens: the caller decides
            self._rejected(p.tenant_id, "tpm" if tokens_refused else "rpm")
            raise err
        ctx.reservation = verdict.reservation

    def _rejected(self, tenant: str, reason: str) -> None:
        if self.observer is not None:
            self.observer.metrics.rejected(tenant=tenant, reason=reason)

    def _cost(self, ctx: CallContext, target: Target | None, usage: Usage) -> Decimal | None:
        cost = self._price(ctx, target, usage)
        if cost is None and (ctx.routing or self.routing).prices is not None and target is not None:
            self.unpriced += 1
        return cost

    def _price(self, ctx: CallContext, target: Target | None, usage: Usage) -> Decimal | None:
        routing = ctx.routing or self.routing  # the request's own: a reload while it runs must not reprice it
        upstream = routing.upstreams.get(target.provider) if target is not None else None
        if routing.prices is None or target is None or upstream is None:
            return None
        return routing.prices.cost(upstream.kind, target.model, usage)

    async def _attempt(
        self,
        ctx: CallContext,
        target: Target,
        upstream: Upstream,
        operation: str,
        fn: Callable[[], Awaitable[T]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[T, Attempt | None]:
        """One upstream call, observed: its span is current while it runs (propagated upstream), its time is
        charged to the request. A failed attempt is finished here; a successful one by the caller."""
        obs = self.observer
        if obs is None:
            t0 = time.perf_counter()
            try:
                return await fn(), None
            finally:
                ctx.upstream_s += time.perf_counter() - t0
        attempt = obs.attempt(
            target, upstream, operation, max_tokens=max_tokens, temperature=temperature, messages=messages
        )
        try:
            with attempt.current():
                value = await fn()
        except BaseException as exc:
            attempt.finish(error=exc)
            raise
        finally:
            ctx.upstream_s += attempt.charge()
        return value, attempt

    @contextmanager
    def _metered(self, ctx: CallContext) -> Iterator[None]:
        """Every failure of a request is metered here, once, and re-raised with the headers every response of its
        kind carries."""
        try:
            yield
        except GatewayError as err:
            for k, v in ctx.limit_headers.items():
                err.headers.setdefault(k, v)
            if ctx.cache is not None:
                err.headers.setdefault("x-aigw-cache", ctx.cache)
            self._record(ctx, status=err.http_status, target=ctx.target, usage=None, error=err)
            err.metered = True
            raise
        except asyncio.CancelledError:  # the client went away (api.disconnect): still one ledger row
            self._record(ctx, status=CLIENT_CLOSED, target=ctx.target, usage=None)
            raise

    async def _run(
        self,
        ctx: CallContext,
        targets: Sequence[Target],
        call: Callable[[Target, Upstream], Awaitable[T]],
        *,
        hold_on_success: bool = False,
    ) -> ServedBy[T]:
        """Run the chain; a failure is re-raised as the error to report, with the number of targets tried."""
        deadline = asyncio.get_running_loop().time() + self._request_timeout_s
        try:
            chain = (ctx.routing or self.routing).chain
            served = await chain.run(targets, deadline, call, hold_on_success=hold_on_success)
            ctx.attempts = served.attempts
            return served
        except ChainFailed as failed:
            ctx.attempts = failed.attempts
            ctx.target = failed.target
            failed.error.headers["x-aigw-attempts"] = str(failed.attempts)
            raise failed.error from None

    async def _enter(
        self, ctx: CallContext, targets: Sequence[Target], chat: ChatInput
    ) -> tuple[CachePlan | None, CachedAnswer | None]:
        """Cache lookup and admission. With both on Redis they run concurrently (one round trip of waiting, not two):
        admission is tried as for a miss, a hit then gives its TPM reservation back (``_record`` settles it at 0),
        and a refusal for tokens alone is reconsidered as a hit, which counts against RPM only (issue 6).
        ``ctx.cache`` says ``bypass`` until the request is admitted: a refused request was served nothing."""
        ctx.cache = "bypass"
        plan = (
            self.cache.plan(ctx.principal.tenant_id, ctx.model, targets, chat, ctx.cache_control)
            if self.cache is not None
            else None
        )
        hit: CachedAnswer | None = None
        p = ctx.principal
        if self.cache is None or plan is None or plan.mode != "read_write":
            await self._admit(ctx)
        elif self.limits is None or (p.rate_limit_rpm is None and p.rate_limit_tpm is None):
            hit = await self.cache.get(plan)
            await self._admit(ctx, cached=hit is not None)
        else:
            lookup = self.cache.lookup(plan)
            try:
                await self._admit(ctx, speculative=True)
            except _TokensRefused as refused:
                hit = await lookup.answer()
                if hit is None:
                    self._rejected(p.tenant_id, "tpm")
                    raise refused.error from None
                await self._admit(ctx, cached=True)
            except BaseException:
                lookup.cancel()
                raise
            else:
                hit = await lookup.answer()
        if self.cache is not None:
            ctx.cache = self.cache.status(plan, hit)
            if self.observer is not None:
                self.observer.metrics.cache_lookup(result=ctx.cache)
        return plan, hit

    async def chat(self, ctx: CallContext, chat: ChatInput) -> Served:
        ctx.routing = routing = self.routing
        req = chat.request

        async def call(target: Target, upstream: Upstream) -> Completion:
            done, attempt = await self._attempt(
                ctx,
                target,
                upstream,
                "chat",
                lambda: upstream.chat(chat, target.model, new_identity()),
                max_tokens=req.output_limit,
                temperature=req.temperature,
                messages=chat.raw["messages"],
            )
            if attempt is not None:
                attempt.finish(
                    usage=done.usage,
                    response_model=done.response_model,
                    finish_reason=done.finish_reason,
                    # Parsed back only for opt-in content capture: the body is bytes on the normal path.
                    choices=orjson.loads(done.body)["choices"] if attempt.captures_content else None,
                )
            return done

        with self._metered(ctx):
            targets = routing.router.resolve(ctx.model)
            plan, hit = await self._enter(ctx, targets, chat)
            if hit is not None:
                body = hit.body(new_identity())
                target = Target(hit.provider, hit.upstream_model)
                self._record(ctx, status=200, target=target, usage=None, hit=hit)
                return Served(body, hit.provider, 0, Decimal(0))
            served = await self._run(ctx, targets, call)
        done = served.value
        cost = self._record(ctx, status=200, target=served.target, usage=done.usage)
        # Written before the response goes out, so readable once it has completed (not waiting for Redis's reply:
        # ADR 0010); not without usage: a hit's saving would be unknown.
        if plan is not None and self.cache is not None and done.usage is not None:
            await self.cache.put(
                plan,
                provider=served.target.provider,
                upstream_model=served.target.model,
                usage=done.usage,
                completion=done.body,
            )
        return Served(done.body, served.target.provider, served.attempts, cost)

    async def chat_stream(self, ctx: CallContext, chat: ChatInput) -> ChatStream:
        """Open a stream on the first target that delivers a first chunk (the commit point): every failure before
        it is an ordinary error and falls back; after it, failures become an in-stream error event. A cached answer
        is replayed as a stream instead."""
        ctx.routing = routing = self.routing
        ident = new_identity()  # one id for the stream, whichever target ends up serving it

        req = chat.request

        async def call(target: Target, upstream: Upstream) -> tuple[UpstreamStream, list[bytes], Attempt | None]:
            (stream, first), attempt = await self._attempt(
                ctx,
                target,
                upstream,
                "chat",
                lambda: upstream.open_stream(chat, target.model, ident, include_usage=req.wants_usage),
                max_tokens=req.output_limit,
                temperature=req.temperature,
                messages=chat.raw["messages"],
            )
            if attempt is not None:
                attempt.first_chunk()
            return stream, first, attempt

        with self._metered(ctx):
            targets = routing.router.resolve(ctx.model)
            plan, hit = await self._enter(ctx, targets, chat)
            if hit is not None:
                return ReplayStream(self, ctx, hit, ident, include_usage=chat.request.wants_usage)
            served = await self._run(ctx, targets, call, hold_on_success=True)
        stream, first, attempt = served.value
        fill = CacheFill(self.cache, plan, ident) if plan is not None and self.cache is not None else None
        return CommittedStream(self, ctx, served.target, stream, first, served.attempts, served.permit, fill, attempt)

    async def embed(self, ctx: CallContext, emb: EmbeddingsInput) -> Served:
        ctx.routing = routing = self.routing
        fmt = emb.request.encoding_format or "float"

        async def call(target: Target, upstream: Upstream) -> EmbeddingsResult:
            result, attempt = await self._attempt(
                ctx, target, upstream, "embeddings", lambda: upstream.embed(emb, target.model, fmt)
            )
            if attempt is not None:
                attempt.finish(usage=result.usage)
            return result

        with self._metered(ctx):
            targets = routing.router.resolve(ctx.model)
            await self._admit(ctx)
            served = await self._run(ctx, targets, call)
        cost = self._record(ctx, status=200, target=served.target, usage=served.value.usage)
        return Served(served.value.body, served.target.provider, served.attempts, cost)

"""The composition root: create_app(settings) builds everything; the lifespan opens and closes the shared
resources (database engine, upstream HTTP session, background tasks). Nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from aigw.api import routes
from aigw.api.chat import chat_completions
from aigw.api.deps import Services
from aigw.api.errors import error_response, handle_gateway_error, handle_unexpected
from aigw.api.middleware import ChatFastPath, RequestIdMiddleware, TracingMiddleware
from aigw.caching import ResponseCache
from aigw.config import Settings, load_settings
from aigw.errors import GatewayError, InvalidRequest, NotFound
from aigw.events import EventService
from aigw.gateway import Gateway
from aigw.keynotices import KeyNotices
from aigw.metering import UsageRecorder, prune_forever
from aigw.observe import Observer
from aigw.pricing import PriceTable
from aigw.providers import build_upstream
from aigw.providers.transport import HttpClients, close_clients, make_clients
from aigw.reload import reload_from, router_for, trace_upstreams
from aigw.state.budgets import month_of, month_start
from aigw.state.factory import (
    TransitionCounter,
    make_breaker,
    make_budgets,
    make_cache_store,
    make_limits,
    make_redis,
)
from aigw.store.db import make_engine
from aigw.store.spend import spend_since
from aigw.store.tenants import TenantRepo
from aigw.store.usage import UsageRepo
from aigw.telemetry.logs import configure_logging, set_level
from aigw.telemetry.metrics import Metrics
from aigw.telemetry.tracing import configure_tracing
from aigw.tenancy import KeyCache, KeySync

log = logging.getLogger("aigw")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err: GatewayError
    if exc.status_code == 404:
        err = NotFound(f"Unknown path {request.url.path}")
    else:
        err = InvalidRequest(exc.detail or "Invalid request")
        err.status = exc.status_code  # type: ignore[misc]  # e.g. 405: keep the framework's status
    return error_response(err)


def tune_gc() -> None:
    """The cyclic garbage collector, set for a server whose request path makes no reference cycles (ADR 0010).

    What start-up built lives as long as the process: frozen, no collection walks it again (a full collection took
    35-50 ms). The young generation's threshold goes from 700 to 50,000 objects: with many requests in flight, the
    number of live objects swings by hundreds with every request, and each swing up started a collection that
    walked (and promoted) all in-flight state; measured at concurrency 64, collections took 12 % of the CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def create_app(settings: Settings, config_path: str | None = None, *, server_process: bool = False) -> Starlette:
    """``server_process``: this app owns its process (``aigw serve``), so it may tune process-wide state (the
    garbage collector); an app built inside another program (the tests) leaves it alone."""
    # Telemetry from the standard environment (OTEL_*, PROMETHEUS_MULTIPROC_DIR): traces only when configured.
    metrics = Metrics.from_env()
    tracing = configure_tracing()
    observer = Observer(metrics, tracing)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        set_level(settings.log_level)
        engine = make_engine(settings.database_url)
        http = make_clients()
        events = EventService(settings, engine, metrics=metrics)
        tenants, usage = TenantRepo(engine), UsageRepo(engine, outbox=events.outbox)
        recorder = UsageRecorder(
            usage,
            batch_size=settings.usage.batch_size,
            flush_interval_s=settings.usage.flush_interval_s,
            max_pending=settings.usage.max_pending,
            on_flush=lambda depth, dropped: metrics.usage_queue(depth=depth, dropped_total=dropped),
        )
        upstreams = {p.name: build_upstream(p, http) for p in settings.providers if p.enabled}
        trace_upstreams(upstreams, tracing)
        redis = make_redis(settings.redis_url, settings.redis_timeout_s) if settings.redis_url else None
        transitions = TransitionCounter(metrics)
        breaker = make_breaker(settings, redis, transitions)
        budgets = make_budgets(redis)
        keys = KeyCache()
        cache_store = make_cache_store(settings, redis)
        cache = (
            ResponseCache(cache_store, settings.cache, {m.name: m.cache for m in settings.models})
            if cache_store is not None
            else None
        )
        sync = KeySync(tenants, keys, settings.key_sync_interval_s)
        notices = (
            KeyNotices(settings.redis_url, keys, sync, timeout_s=settings.redis_timeout_s)
            if settings.redis_url
            else None
        )
        svc = Services(
            settings=settings,
            engine=engine,
            gateway=Gateway(
                router_for(settings),
                upstreams,
                recorder,
                breaker,
                request_timeout_s=settings.request_timeout_s,
                prices=PriceTable(settings.pricing),
                limits=make_limits(settings, redis),
                budgets=budgets,
                cache=cache,
                observer=observer,
            ),
            redis=redis,
            transitions=transitions,
            keys=keys,
            tenants=tenants,
            usage=usage,
            recorder=recorder,
            started_at=int(time.time()),
            key_sync=sync,
            notices=notices,
            config_path=config_path,
            events=events,
        )
        app.state.aigw = svc
        try:
            now = datetime.now(UTC)  # this month's spend so far, once: budgets then run on the running totals
            await budgets.seed(month_of(now), await spend_since(engine, month_start(now)))
        except Exception as exc:
            log.error("could not read this month's spend at start (%s); budgets count from now", type(exc).__name__)
        try:
            await sync.load()
        except Exception as exc:  # start anyway: /healthz answers, /readyz says why not, the sync retries
            log.error("could not load API keys at start (%s); will retry in the background", type(exc).__name__)
        sync.start()
        if config_path is not None:
            _on_sighup(svc, http)
        if notices is not None:
            notices.start()
        recorder.start()
        await events.start()
        retention = (
            asyncio.get_running_loop().create_task(prune_forever(usage, settings.usage.retention_days))
            if settings.usage.retention_days
            else None
        )
        log.info("aigw ready: %d providers, %d aliases, %d keys", len(upstreams), len(settings.models), len(keys))
        if server_process:
            tune_gc()
        try:
            yield
        finally:
            if config_path is not None:
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if retention is not None:
                retention.cancel()
            await sync.stop()
            if notices is not None:
                await notices.stop()
            await recorder.stop()  # first: its last records' events go into the outbox
            await events.stop()
            await close_clients(http)
            await engine.dispose()
            if redis is not None:
                await redis.aclose()
            if tracing is not None:
                tracing.shutdown()
            metrics.close()

    return Starlette(
        routes=routes(),
        middleware=[
            *([Middleware(TracingMiddleware, tracing=tracing)] if tracing is not None else []),
            Middleware(RequestIdMiddleware),
            Middleware(ChatFastPath, handler=chat_completions),
        ],
        exception_handlers={
            GatewayError: handle_gateway_error,
            HTTPException: _http_error,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )


def _on_sighup(svc: Services, http: HttpClients) -> None:
    """SIGHUP reloads the config file (reload.py). Only the main thread can own a signal: in a thread (tests,
    embedding) there is no handler and reloading is left to the host."""
    path = svc.config_path
    assert path is not None

    def reload() -> None:
        svc.settings = reload_from(path, svc.settings, svc.gateway, http)

    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def app_from_env() -> Starlette:
    """uvicorn factory for ``--workers N`` and ``--reload``: each worker process builds its own app."""
    path = os.environ["AIGW_CONFIG"]
    settings = load_settings(path)
    configure_logging(settings.log_level)
    return create_app(settings, config_path=path, server_process=True)

"""POST /v1/chat/completions → JSON, or SSE for ``stream: true``."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from aigw.api.bodies import read_json_object, typed
from aigw.api.deps import client_principal, request_id, services
from aigw.api.disconnect import until_disconnect
from aigw.api.sse import SSEResponse
from aigw.calls import CallContext
from aigw.errors import GatewayError
from aigw.limits import estimate_chat
from aigw.providers.base import ChatInput
from aigw.schema.chat import ChatCompletionRequest


async def chat_completions(request: Request) -> Response | ASGIApp:
    try:
        return await _chat_completions(request)
    except GatewayError as err:  # x-aigw-cache is on every chat response (contract), refusals before the cache too
        err.headers.setdefault("x-aigw-cache", "bypass")
        raise


async def _chat_completions(request: Request) -> Response | ASGIApp:
    started = time.perf_counter()
    svc = services(request)
    principal = client_principal(request, svc)
    raw = await read_json_object(request, svc.settings.max_body_bytes)
    req = typed(raw, ChatCompletionRequest)
    # cache: "bypass" until the cache decides otherwise, so the ledger and the events say what the header says.
    ctx = CallContext(principal, request_id(request), req.model, started, stream=bool(req.stream), cache="bypass")
    ctx.cache_control = request.headers.get("cache-control")
    if principal.rate_limit_tpm is not None:
        ctx.token_estimate = estimate_chat(req, svc.settings.rate_limits.estimate_output_tokens)
    chat = ChatInput(req, raw)
    if req.stream:
        committed = await until_disconnect(request.receive, svc.gateway.chat_stream(ctx, chat))
        return SSEResponse(
            committed,
            {
                "x-aigw-provider": committed.provider,
                "x-aigw-attempts": str(committed.attempts),
                "x-aigw-cache": ctx.cache or "bypass",
                **ctx.limit_headers,
                **({"x-aigw-cost-usd": "0"} if ctx.cache == "hit" else {}),  # a stream's cost is known only at a hit
                "x-aigw-overhead-ms": overhead_ms(ctx),  # until the first chunk
            },
        )
    served = await until_disconnect(request.receive, svc.gateway.chat(ctx, chat))
    return Response(
        served.body,
        media_type="application/json",
        headers={
            "x-aigw-provider": served.provider,
            "x-aigw-attempts": str(served.attempts),
            "x-aigw-cache": ctx.cache or "bypass",
            **ctx.limit_headers,
            "x-aigw-overhead-ms": overhead_ms(ctx),
            # Omitted when the model has no price: an unknown cost is not a zero cost.
            **({"x-aigw-cost-usd": format(served.cost_usd, "f")} if served.cost_usd is not None else {}),
        },
    )


def overhead_ms(ctx: CallContext) -> str:
    """Time spent in the gateway so far, excluding the time spent waiting on upstreams (x-aigw-overhead-ms)."""
    return format(max(0.0, time.perf_counter() - ctx.started - ctx.upstream_s) * 1000.0, ".3f")

"""POST /v1/embeddings."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from aigw.api.bodies import read_json_object, typed
from aigw.api.chat import overhead_ms
from aigw.api.deps import client_principal, request_id, services
from aigw.api.disconnect import until_disconnect
from aigw.calls import CallContext
from aigw.limits import estimate_embeddings
from aigw.providers.base import EmbeddingsInput
from aigw.schema.embeddings import EmbeddingRequest


async def embeddings(request: Request) -> Response:
    started = time.perf_counter()
    svc = services(request)
    principal = client_principal(request, svc)
    raw = await read_json_object(request, svc.settings.max_body_bytes)
    req = typed(raw, EmbeddingRequest)
    ctx = CallContext(principal, request_id(request), req.model, started)
    if principal.rate_limit_tpm is not None:
        ctx.token_estimate = estimate_embeddings(req)
    served = await until_disconnect(request.receive, svc.gateway.embed(ctx, EmbeddingsInput(req, raw)))
    headers = {
        "x-aigw-provider": served.provider,
        "x-aigw-attempts": str(served.attempts),
        "x-aigw-overhead-ms": overhead_ms(ctx),
        **ctx.limit_headers,
    }
    return Response(served.body, media_type="application/json", headers=headers)

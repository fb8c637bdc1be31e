"""GET /metrics: Prometheus text for every worker of this host (prometheus_client's multiprocess files when
``PROMETHEUS_MULTIPROC_DIR`` is set). Unauthenticated, like /healthz: scrapers rarely carry keys, and nothing in it
is secret (tenant ids, not names or keys)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from aigw.api.deps import services


async def metrics(request: Request) -> Response:
    svc = services(request)
    observer = svc.gateway.observer
    if observer is None:
        return Response(b"", status_code=404)
    # Off the event loop: with several workers, rendering reads and merges every worker's files.
    body, content_type = await asyncio.to_thread(observer.metrics.render)
    return Response(body, headers={"content-type": content_type})

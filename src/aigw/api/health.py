"""Liveness and readiness (contract): /healthz answers once serving, even with the database or Redis down;
/readyz is 200 only when the database (and Redis, when configured) answer."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from aigw.api.deps import services
from aigw.store.db import ping

_READY_TIMEOUT_S = 2.0


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(ping(svc.engine), _READY_TIMEOUT_S)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is for operators
        checks["database"] = f"unavailable ({type(exc).__name__})"
    if svc.redis is not None:
        try:
            await asyncio.wait_for(svc.redis.ping(), _READY_TIMEOUT_S)
            checks["redis"] = "ok"
        except Exception as exc:  # the gateway still serves (degraded to local state), but is not ready
            checks["redis"] = f"unavailable ({type(exc).__name__})"
    checks["api_keys"] = "loaded" if svc.key_sync.loaded else "not loaded yet"
    ok = all(v == "ok" for k, v in checks.items() if k != "api_keys") and svc.key_sync.loaded
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

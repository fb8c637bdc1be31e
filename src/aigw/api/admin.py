"""Admin API (contract): tenants CRUD, keys create/revoke, usage. Guarded by the admin key (constant-time).

Writes go to the database first, then to this process's key cache, so a revoked key stops working here at once;
other processes get a notice over Redis pub/sub when it is configured (keynotices.py), else their next key sync.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from aigw.api.bodies import parse_json_object, read_body, read_json_object, typed
from aigw.api.deps import Services, require_admin, services
from aigw.errors import Conflict, GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from aigw.store.tenants import DuplicateKeyError, KeyGrant, Tenant, TenantNotFoundError
from aigw.tenancy import display_prefix, hash_key, new_key

log = logging.getLogger("aigw.admin")

Limit = Annotated[int, Meta(ge=1, le=2**31 - 1)]  # the columns are 32-bit integers on PostgreSQL
Money = Annotated[float, Meta(ge=0)]
MIN_IMPORTED_KEY = 32


class TenantCreate(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    rate_limit_rpm: Limit | None = None
    rate_limit_tpm: Limit | None = None
    monthly_budget_usd: Money | None = None


class TenantPatch(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType = UNSET
    rate_limit_rpm: Limit | None | UnsetType = UNSET
    rate_limit_tpm: Limit | None | UnsetType = UNSET
    monthly_budget_usd: Money | None | UnsetType = UNSET


class KeyCreate(Struct, forbid_unknown_fields=True):
    key: Annotated[str, Meta(min_length=MIN_IMPORTED_KEY, max_length=256)] | None = None


def _money(v: float | None) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def _default(o: object) -> Any:
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=_default), status, media_type="application/json")


def _tenant(t: Tenant) -> dict[str, object]:
    d = asdict(t)
    d.pop("deleted_at", None)
    for k, v in d.items():
        if isinstance(v, datetime):
            d[k] = v.isoformat()
    return d


@asynccontextmanager
async def _db() -> AsyncIterator[None]:
    """Database trouble on an admin call is a clear 503, never a 500 or a hang."""
    try:
        yield
    except (GatewayError, DuplicateKeyError, TenantNotFoundError):
        raise
    except Exception as exc:
        log.warning("admin database operation failed: %s", type(exc).__name__)
        raise ServiceUnavailable("The database is unavailable; retry later") from None


async def _body(request: Request) -> dict[str, Any]:
    return await read_json_object(request, services(request).settings.max_body_bytes)


async def _notify(svc: Services, *, revoked: Sequence[str] = (), deleted_tenant: str | None = None) -> None:
    """Push the change to the other processes (Redis); without Redis they see it at their next key sync."""
    if svc.notices is not None:
        await svc.notices.publish(revoked=revoked, deleted_tenant=deleted_tenant)


async def create_tenant(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    body = typed(await _body(request), TenantCreate)
    key = new_key()
    async with _db():
        tenant, api_key = await svc.tenants.create_tenant(
            body.name,
            body.rate_limit_rpm,
            body.rate_limit_tpm,
            _money(body.monthly_budget_usd),
            key_hash=hash_key(key),
            key_prefix=display_prefix(key),
        )
    svc.keys.apply([KeyGrant(key_id=api_key.id, key_hash=hash_key(key), tenant=tenant, revoked=False)])
    await _notify(svc)
    return _json({**_tenant(tenant), "api_key": key, "key_id": api_key.id}, 201)


async def list_tenants(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    async with _db():
        tenants = await svc.tenants.list_tenants()
    return _json({"object": "list", "data": [_tenant(t) for t in tenants]})


async def _get(request: Request) -> Tenant:
    svc = services(request)
    tid = request.path_params["tenant_id"]
    async with _db():
        tenant = await svc.tenants.get_tenant(tid)
    if tenant is None:
        raise NotFound(f"No tenant with id {tid!r}")
    return tenant


async def get_tenant(request: Request) -> Response:
    require_admin(request, services(request))
    return _json(_tenant(await _get(request)))


async def update_tenant(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    patch = typed(await _body(request), TenantPatch)
    changes = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not UNSET}
    if "monthly_budget_usd" in changes:
        changes["monthly_budget_usd"] = _money(changes["monthly_budget_usd"])
    tid = request.path_params["tenant_id"]
    async with _db():
        tenant = await svc.tenants.update_tenant(tid, **changes)
    if tenant is None:
        raise NotFound(f"No tenant with id {tid!r}")
    svc.keys.update_tenant(tenant.id, tenant.rate_limit_rpm, tenant.rate_limit_tpm, tenant.monthly_budget_usd)
    await _notify(svc)
    return _json(_tenant(tenant))


async def delete_tenant(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    tid = request.path_params["tenant_id"]
    async with _db():
        revoked = await svc.tenants.delete_tenant(tid)
    if revoked is None:
        raise NotFound(f"No tenant with id {tid!r}")
    svc.keys.delete_tenant(tid, revoked)
    await _notify(svc, revoked=revoked, deleted_tenant=tid)
    return _json({"id": tid, "deleted": True, "revoked_keys": revoked})


async def create_key(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    body_bytes = await read_body(request, svc.settings.max_body_bytes)  # the body is optional here
    raw = parse_json_object(body_bytes) if body_bytes else {}
    body = typed(raw, KeyCreate)
    key = body.key if body.key is not None else new_key()
    if body.key is not None and any(c.isspace() for c in key):
        raise InvalidRequest("An imported key must not contain whitespace", param="key")
    tid = request.path_params["tenant_id"]
    try:
        async with _db():
            api_key = await svc.tenants.create_key(tid, key_hash=hash_key(key), key_prefix=display_prefix(key))
    except DuplicateKeyError:
        raise Conflict("That key already exists", param="key") from None
    except TenantNotFoundError:
        raise NotFound(f"No tenant with id {tid!r}") from None
    tenant = await _get(request)
    svc.keys.apply([KeyGrant(key_id=api_key.id, key_hash=hash_key(key), tenant=tenant, revoked=False)])
    await _notify(svc)
    return _json({"id": api_key.id, "tenant_id": tid, "api_key": key, "prefix": api_key.prefix}, 201)


async def revoke_key(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    kid = request.path_params["key_id"]
    async with _db():
        key = await svc.tenants.revoke_key(kid)
    if key is None:
        raise NotFound(f"No key with id {kid!r}")
    svc.keys.revoke([kid])
    await _notify(svc, revoked=[kid])
    return _json({"id": kid, "revoked": True})


async def tenant_usage(request: Request) -> Response:
    """Contract totals and ``by_model``; ``?from=&to=`` (UTC days, both inclusive) and ``group_by=day`` (adds
    ``by_day``). Read from the daily rollups."""
    svc = services(request)
    require_admin(request, svc)
    start, end = _usage_day(request, "from"), _usage_day(request, "to")
    if start is not None and end is not None and start > end:
        raise InvalidRequest(f"'from' ({start}) is after 'to' ({end})", param="from")
    raw_group_by = request.query_params.get("group_by", "model")
    if raw_group_by not in ("model", "day"):
        raise InvalidRequest(f"group_by must be 'model' or 'day', not {raw_group_by!r}", param="group_by")
    group_by: Literal["model", "day"] = "day" if raw_group_by == "day" else "model"
    tenant = await _get(request)
    async with _db():
        report = await svc.usage.report(tenant.id, start=start, end=end, group_by=group_by)
    body = asdict(report.summary)
    if report.by_day is not None:
        body["by_day"] = [asdict(d) | {"day": d.day.isoformat()} for d in report.by_day]
    return _json(body)


def _usage_day(request: Request, param: str) -> date | None:
    raw = request.query_params.get(param)
    if raw is None or raw == "":
        return None
    try:
        if len(raw) != 10:  # fromisoformat also takes 20261126 and 2026-W48-4: the contract says YYYY-MM-DD
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{param} must be a date as YYYY-MM-DD, not {raw!r}", param=param) from None


async def list_providers(request: Request) -> Response:
    """Every configured target's circuit: state, consecutive failures, last error, when it opened."""
    svc = services(request)
    require_admin(request, svc)
    gw = svc.gateway
    targets = {t.key: t for ts in gw.router.aliases.values() for t in ts}
    health = await gw.breaker.snapshot(sorted(targets))
    data = []
    for h in health:
        t = targets[h.key]
        data.append(
            {
                "target": h.key,
                "provider": t.provider,
                "model": t.model,
                "state": h.state.value,
                "consecutive_failures": h.consecutive_failures,
                "last_error": h.last_error,
                "opened_at": datetime.fromtimestamp(h.opened_at, UTC).isoformat() if h.opened_at else None,
                "recent": {"requests": h.window_requests, "failures": h.window_failures},
                "transitions": svc.transitions.for_key(h.key),
            }
        )
    return _json({"object": "list", "data": data})

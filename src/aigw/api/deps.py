"""What handlers need from the running app, in one typed object (built by aigw.app's lifespan)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from aigw.api.middleware import REQUEST_ID_KEY
from aigw.config import Settings
from aigw.errors import Unauthorized
from aigw.events import EventService
from aigw.gateway import Gateway
from aigw.keynotices import KeyNotices
from aigw.metering import UsageRecorder
from aigw.state.factory import TransitionCounter
from aigw.state.redis_calls import RedisClient
from aigw.store.tenants import TenantRepo
from aigw.store.usage import UsageRepo
from aigw.tenancy import KeyCache, KeySync, Principal


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    gateway: Gateway
    keys: KeyCache
    tenants: TenantRepo
    usage: UsageRepo
    recorder: UsageRecorder
    started_at: int
    key_sync: KeySync
    redis: RedisClient | None
    transitions: TransitionCounter
    notices: KeyNotices | None = None
    config_path: str | None = None  # what SIGHUP reloads (None: built from settings in code, nothing to reload)
    events: EventService | None = None


def services(request: Request) -> Services:
    svc: Services = request.app.state.aigw
    return svc


def request_id(request: Request) -> str:
    rid: str = request.scope[REQUEST_ID_KEY]
    return rid


def is_admin_key(svc: Services, authorization: str | None) -> bool:
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    expected = svc.settings.admin_key.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def client_principal(request: Request, svc: Services) -> Principal:
    authorization = request.headers.get("authorization")
    try:
        return svc.keys.authenticate(authorization)
    except Unauthorized:
        if is_admin_key(svc, authorization):
            raise Unauthorized("The admin key is not a client key: create a tenant key with the admin API") from None
        raise


def require_admin(request: Request, svc: Services) -> None:
    if not is_admin_key(svc, request.headers.get("authorization")):
        raise Unauthorized("Admin API: send `Authorization: Bearer <admin_key>`")

"""What one request carries through the gateway: the routing it started on, its context, what it was served."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from aigw.caching import CacheStatus
from aigw.fallback import Chain
from aigw.pricing import PriceTable
from aigw.providers.transport import Upstream
from aigw.ratelimit import Reservation
from aigw.routing import Router, Target
from aigw.tenancy import Principal


@dataclass(frozen=True, slots=True)
class Routing:
    """What a config reload swaps, as one value: a request resolves, runs and is priced on the routing it started
    with, whatever reload lands while it waits on Redis or an upstream."""

    router: Router
    upstreams: Mapping[str, Upstream]
    prices: PriceTable | None
    chain: Chain


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
    cache_control: str | None = None  # the client's Cache-Control header (chat only)
    cache: CacheStatus | None = None  # x-aigw-cache once decided; None: the cache does not apply (embeddings)
    target: Target | None = None  # the target whose client error is being returned, for the ledger
    upstream_s: float = 0.0  # time spent waiting on upstreams (the gateway's overhead is the rest)
    # The routing when the request entered the gateway: a reload neither reroutes nor reprices it.
    routing: Routing | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Served:
    body: bytes
    provider: str
    attempts: int  # targets called (x-aigw-attempts)
    cost_usd: Decimal | None = None  # None: the model has no price

"""Config reload on SIGHUP, without a restart and without dropping a request.

Reloaded: providers, model aliases (with their cache settings), pricing, the admin key, ``max_body_bytes`` and
``log_level``. The new objects are swapped in between two requests (the event loop runs one thing at a time):
requests already running keep the router, upstreams and prices they started with, new ones get the new config.
Everything else (database, Redis, limits, breaker, usage batching, cache store, timeouts of the whole chain…)
belongs to resources opened at start; a change there is reported and needs a restart.

An invalid file changes nothing: the error is logged and the gateway goes on with the config it has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aigw.config import Settings, load_settings
from aigw.config.loader import ConfigError
from aigw.gateway import Gateway
from aigw.pricing import PriceTable
from aigw.providers import build_upstream
from aigw.providers.transport import HttpClients, Upstream
from aigw.routing import Router, Target
from aigw.telemetry.logs import set_level
from aigw.telemetry.tracing import Tracing

__all__ = ["RELOADABLE", "reload_from", "router_for", "trace_upstreams"]

log = logging.getLogger("aigw.reload")

RELOADABLE = frozenset({"providers", "models", "pricing", "admin_key", "max_body_bytes", "log_level"})


def router_for(settings: Settings) -> Router:
    enabled = [p.name for p in settings.providers if p.enabled]
    for p in settings.providers:
        if not p.enabled:
            log.warning("provider %s (%s) is disabled: its api_key is empty", p.name, p.type)
    aliases = {m.name: [Target(t.provider, t.model, t.retries) for t in m.targets] for m in settings.models}
    return Router(aliases, enabled)


def trace_upstreams(upstreams: Mapping[str, Upstream], tracing: Tracing | None) -> None:
    """Propagate the trace context upstream when tracing is on."""
    for upstream in upstreams.values():
        upstream.trace_inject = tracing.inject if tracing is not None else None


def _dump(settings: Settings, keys: Iterable[str]) -> dict[str, Any]:
    return settings.model_dump(include=set(keys))


def reload_from(path: str, current: Settings, gateway: Gateway, http: HttpClients) -> Settings:
    """Read ``path`` and apply what can be applied live; returns the settings now in effect."""
    try:
        new = load_settings(path)
    except (ConfigError, OSError) as exc:
        log.error("config reload failed, keeping the running config: %s", exc)
        return current
    fixed = set(Settings.model_fields) - RELOADABLE
    restart = sorted(k for k in fixed if _dump(new, [k]) != _dump(current, [k]))
    if restart:
        log.warning("config reload: %s changed but only take effect after a restart", ", ".join(restart))
    upstreams = {p.name: build_upstream(p, http) for p in new.providers if p.enabled}
    trace_upstreams(upstreams, gateway.observer.tracing if gateway.observer is not None else None)
    gateway.reconfigure(
        router_for(new),
        upstreams,
        PriceTable(new.pricing),
        {m.name: m.cache for m in new.models},
    )
    set_level(new.log_level)
    effective = current.model_copy(update={k: getattr(new, k) for k in RELOADABLE})
    log.info("config reloaded: %d providers, %d aliases", len(upstreams), len(new.models))
    return effective

"""``GET /admin/events``: the usage-event sinks' health (admin key required).

Per sink: state, backlog (all replicas, as last measured), events dropped by the backlog bound (all replicas, ever),
this process's delivery counters and last error; plus events queued for sinks no longer configured.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aigw.api.deps import require_admin, services
from aigw.events import EVENT_TYPE, SCHEMA_VERSION, EventService

_DISABLED = {
    "enabled": False,
    "event_type": EVENT_TYPE,
    "schema_version": SCHEMA_VERSION,
    "measured_at": None,
    "measure_error": None,
    "sinks": [],
    "orphaned": [],
}


async def events_status(request: Request) -> Response:
    svc = services(request)
    require_admin(request, svc)
    # Services.events is None when the gateway runs without an `events:` section.
    events = getattr(svc, "events", None)
    data = events.status() if isinstance(events, EventService) else _DISABLED
    return Response(orjson.dumps(data), media_type="application/json")

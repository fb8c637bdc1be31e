"""GET /v1/models: the aliases, then ``provider/model`` for every configured target."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from aigw.api.deps import client_principal, services
from aigw.schema.chat import encode
from aigw.schema.models import Model, ModelList


async def list_models(request: Request) -> Response:
    svc = services(request)
    client_principal(request, svc)
    created = svc.started_at
    data: list[Model] = []
    seen: set[str] = set()
    for alias, targets in svc.gateway.router.aliases.items():
        if targets:
            data.append(Model(id=alias, created=created, owned_by="aigw"))
            seen.add(alias)
    for targets in svc.gateway.router.aliases.values():
        for t in targets:
            if t.key not in seen:
                seen.add(t.key)
                data.append(Model(id=t.key, created=created, owned_by=t.provider))
    return Response(encode(ModelList(data=data)), media_type="application/json")

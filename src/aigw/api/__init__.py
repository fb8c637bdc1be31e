"""The HTTP surface: the route table in one place."""

from __future__ import annotations

from starlette.routing import Route

from aigw.api import admin, chat, embeddings, events, health, metrics, models


def routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/admin/tenants", admin.create_tenant, methods=["POST"]),
        Route("/admin/tenants", admin.list_tenants, methods=["GET"]),
        Route("/admin/tenants/{tenant_id}", admin.get_tenant, methods=["GET"]),
        Route("/admin/tenants/{tenant_id}", admin.update_tenant, methods=["PATCH"]),
        Route("/admin/tenants/{tenant_id}", admin.delete_tenant, methods=["DELETE"]),
        Route("/admin/tenants/{tenant_id}/keys", admin.create_key, methods=["POST"]),
        Route("/admin/tenants/{tenant_id}/usage", admin.tenant_usage, methods=["GET"]),
        Route("/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/admin/providers", admin.list_providers, methods=["GET"]),
        Route("/admin/events", events.events_status, methods=["GET"]),
    ]

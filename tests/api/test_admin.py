"""Admin API end to end (contract "Admin API"): auth, tenants CRUD, keys (create / import / revoke), usage report;
and ``GET /v1/models`` as a tenant sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import TenantKey
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.openapi import validate

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello gateway world"}]
IMPORTED = "gw-sk-imported-" + "0123456789abcdefghij" * 2  # 55 characters


@pytest.fixture
def admin(gw: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as c:
        yield c


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    validate("ErrorResponse", body)
    err: dict[str, Any] = body["error"]
    return err


def client_status(gw: RunningGateway, key: str, path: str = "/v1/models") -> int:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=10) as c:
        return c.get(path).status_code


def chat(gw: RunningGateway, key: str, model: str, **extra: Any) -> httpx.Response:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=10) as c:
        r = c.post(CHAT, json={"model": model, "messages": MSG, **extra})
    assert r.status_code == 200, r.text
    return r


def tenant_ids(admin: httpx.Client) -> list[str]:
    r = admin.get("/admin/tenants")
    assert r.status_code == 200, r.text
    body = r.json()
    items = body["data"] if isinstance(body, dict) else body
    return [t["id"] for t in items]


# -- auth ----------------------------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/admin/tenants", None),
    ("POST", "/admin/tenants", {"name": "intruder"}),
    ("GET", "/admin/tenants/{tid}", None),
    ("PATCH", "/admin/tenants/{tid}", {"name": "hijacked"}),
    ("DELETE", "/admin/tenants/{tid}", None),
    ("POST", "/admin/tenants/{tid}/keys", {}),
    ("GET", "/admin/tenants/{tid}/usage", None),
    ("DELETE", "/admin/keys/{kid}", None),
]


@pytest.mark.parametrize("auth", ["none", "wrong-key", "tenant-key", "basic-scheme"])
def test_admin_api_needs_the_admin_key(auth: str, gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    headers = {
        "none": {},
        "wrong-key": {"authorization": f"Bearer {ADMIN_KEY}x"},
        "tenant-key": {"authorization": f"Bearer {tenant.key}"},
        "basic-scheme": {"authorization": f"Basic {ADMIN_KEY}"},
    }[auth]
    before = tenant_ids(admin)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for method, path, body in ADMIN_CALLS:
            url = path.format(tid=tenant.id, kid=tenant.key_id)
            err = error_of(c.request(method, url, json=body, headers=headers), 401)
            assert err["type"] == "authentication_error"
    assert tenant_ids(admin) == before, "nothing was created or deleted"
    assert admin.get(f"/admin/tenants/{tenant.id}").json()["name"] == "e2e"
    assert client_status(gw, tenant.key) == 200, "the tenant and its key are untouched"


# -- tenants ---------------------------------------------------------------------------------------------------


def test_create_tenant(gw: RunningGateway, admin: httpx.Client) -> None:
    body = {"name": "acme", "rate_limit_rpm": 600, "rate_limit_tpm": 100_000, "monthly_budget_usd": 12.5}
    r = admin.post("/admin/tenants", json=body)
    assert r.status_code == 201, r.text
    t = r.json()
    assert isinstance(t["id"], str) and t["id"]
    assert t["name"] == "acme"
    assert t["rate_limit_rpm"] == 600 and t["rate_limit_tpm"] == 100_000 and t["monthly_budget_usd"] == 12.5
    assert t["api_key"].startswith("gw-sk-") and len(t["api_key"]) >= 32
    assert client_status(gw, t["api_key"]) == 200, "the new key works at once"
    assert t["id"] in tenant_ids(admin)

    bare = admin.post("/admin/tenants", json={"name": "bare"})
    assert bare.status_code == 201
    b = bare.json()
    assert b["rate_limit_rpm"] is None and b["rate_limit_tpm"] is None and b["monthly_budget_usd"] is None
    assert b["id"] != t["id"] and b["api_key"] != t["api_key"]


BAD_TENANTS: list[tuple[str, Any]] = [
    ("missing-name", {"rate_limit_rpm": 10}),
    ("empty-name", {"name": ""}),
    ("name-not-string", {"name": 7}),
    ("negative-rpm", {"name": "x", "rate_limit_rpm": -5}),
    ("zero-tpm", {"name": "x", "rate_limit_tpm": 0}),
    ("tpm-over-int32", {"name": "x", "rate_limit_tpm": 2**31}),  # would fail in PostgreSQL's INTEGER column
    ("rpm-string", {"name": "x", "rate_limit_rpm": "many"}),
    ("negative-budget", {"name": "x", "monthly_budget_usd": -1}),
    ("unknown-field", {"name": "x", "color": "blue"}),
    ("array", [{"name": "x"}]),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_TENANTS], ids=[i for i, _ in BAD_TENANTS])
def test_create_tenant_validation(body: Any, admin: httpx.Client) -> None:
    before = tenant_ids(admin)
    err = error_of(admin.post("/admin/tenants", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert tenant_ids(admin) == before


@pytest.mark.parametrize("raw", [b"", b"{not json", b'{"name": "caf\xff"}'])
def test_create_tenant_malformed_body(raw: bytes, admin: httpx.Client) -> None:
    error_of(admin.post("/admin/tenants", content=raw, headers={"content-type": "application/json"}), 400)


def test_get_tenant(tenant: TenantKey, admin: httpx.Client) -> None:
    r = admin.get(f"/admin/tenants/{tenant.id}")
    assert r.status_code == 200
    t = r.json()
    assert t["id"] == tenant.id and t["name"] == "e2e"
    assert "api_key" not in t, "the key is shown once, at creation"
    assert "no-such-tenant" not in tenant_ids(admin)
    err = error_of(admin.get("/admin/tenants/no-such-tenant"), 404)
    assert err["type"] == "invalid_request_error"


def test_patch_tenant(gw: RunningGateway, admin: httpx.Client) -> None:
    t = gw.new_tenant("before", rate_limit_rpm=100, rate_limit_tpm=5000, monthly_budget_usd=10)
    url = f"/admin/tenants/{t['id']}"
    r = admin.patch(url, json={"name": "after", "rate_limit_rpm": 250})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "after"
    got = admin.get(url).json()
    assert (got["name"], got["rate_limit_rpm"], got["rate_limit_tpm"], got["monthly_budget_usd"]) == (
        "after",
        250,
        5000,
        10,
    ), "fields not in the patch are unchanged"

    assert admin.patch(url, json={"rate_limit_tpm": None, "monthly_budget_usd": None}).status_code == 200
    got = admin.get(url).json()
    assert got["rate_limit_tpm"] is None and got["monthly_budget_usd"] is None, "null clears a limit"
    assert got["rate_limit_rpm"] == 250 and got["name"] == "after"

    error_of(admin.patch(url, json={"rate_limit_rpm": -1}), 400)
    error_of(admin.patch(url, json={"name": None}), 400)
    error_of(admin.patch(url, json={"owner": "me"}), 400)
    assert admin.get(url).json()["rate_limit_rpm"] == 250, "a refused patch changes nothing"
    error_of(admin.patch("/admin/tenants/no-such-tenant", json={"name": "x"}), 404)
    assert client_status(gw, t["api_key"]) == 200


def test_delete_tenant(gw: RunningGateway, admin: httpx.Client) -> None:
    t = gw.new_tenant("doomed")
    second = admin.post(f"/admin/tenants/{t['id']}/keys")
    assert second.status_code == 201
    keys = [t["api_key"], second.json()["api_key"]]
    assert all(client_status(gw, k) == 200 for k in keys)

    r = admin.delete(f"/admin/tenants/{t['id']}")
    assert r.status_code == 200, r.text
    for k in keys:
        assert client_status(gw, k) == 401, "every key of a deleted tenant is refused at once"
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {k}"}, timeout=10) as c:
            error_of(c.post(CHAT, json={"model": "gpt", "messages": MSG}), 401)
    error_of(admin.get(f"/admin/tenants/{t['id']}"), 404)
    assert t["id"] not in tenant_ids(admin)
    error_of(admin.delete(f"/admin/tenants/{t['id']}"), 404)
    error_of(admin.patch(f"/admin/tenants/{t['id']}", json={"name": "zombie"}), 404)
    error_of(admin.post(f"/admin/tenants/{t['id']}/keys", json={}), 404)
    error_of(admin.delete("/admin/tenants/no-such-tenant"), 404)


# -- keys ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["none", "empty-object"])
def test_create_key(body: str, gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    url = f"/admin/tenants/{tenant.id}/keys"
    r = admin.post(url) if body == "none" else admin.post(url, json={})
    assert r.status_code == 201, r.text
    k = r.json()
    assert k["id"] and k["id"] != tenant.key_id
    assert k["api_key"].startswith("gw-sk-") and k["api_key"] != tenant.key
    assert client_status(gw, k["api_key"]) == 200
    assert client_status(gw, tenant.key) == 200, "the tenant's first key still works"


def test_import_key(gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    url = f"/admin/tenants/{tenant.id}/keys"
    assert client_status(gw, IMPORTED) == 401
    r = admin.post(url, json={"key": IMPORTED})
    assert r.status_code == 201, r.text
    assert r.json()["api_key"] == IMPORTED
    assert client_status(gw, IMPORTED) == 200
    usage = chat(gw, IMPORTED, "gpt").json()["usage"]
    assert usage["completion_tokens"] == 4

    err = error_of(admin.post(url, json={"key": IMPORTED}), 409)
    assert err["type"] == "invalid_request_error"
    other = gw.new_tenant("other")
    error_of(admin.post(f"/admin/tenants/{other['id']}/keys", json={"key": IMPORTED}), 409)
    error_of(admin.post(url, json={"key": tenant.key}), 409)
    assert client_status(gw, IMPORTED) == 200, "a refused duplicate leaves the original working"


@pytest.mark.parametrize("key", ["gw-sk-short", "x" * 31, "", 12345])
def test_import_key_validation(key: Any, gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    err = error_of(admin.post(f"/admin/tenants/{tenant.id}/keys", json={"key": key}), 400)
    assert err["type"] == "invalid_request_error"
    if isinstance(key, str) and key:
        assert client_status(gw, key) == 401


def test_key_for_unknown_tenant_is_404(gw: RunningGateway, admin: httpx.Client) -> None:
    error_of(admin.post("/admin/tenants/no-such-tenant/keys", json={}), 404)
    key = "gw-sk-orphan-" + "9" * 40
    error_of(admin.post("/admin/tenants/no-such-tenant/keys", json={"key": key}), 404)
    assert client_status(gw, key) == 401


def test_revoke_key(gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    second = admin.post(f"/admin/tenants/{tenant.id}/keys", json={}).json()
    assert client_status(gw, second["api_key"]) == 200
    r = admin.delete(f"/admin/keys/{second['id']}")
    assert r.status_code == 200, r.text
    assert client_status(gw, second["api_key"]) == 401, "refused on the very next request"
    assert client_status(gw, tenant.key) == 200, "the tenant's other key still works"
    chat(gw, tenant.key, "gpt")
    error_of(admin.delete("/admin/keys/no-such-key"), 404)


# -- usage -----------------------------------------------------------------------------------------------------


def test_usage_report(gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    a = chat(gw, tenant.key, "gpt").json()["usage"]
    b = chat(gw, tenant.key, "gpt", max_completion_tokens=2).json()["usage"]
    c = chat(gw, tenant.key, "llama").json()["usage"]
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {tenant.key}"}, timeout=10) as h:
        streamed = h.post(CHAT, json={"model": "gpt", "messages": MSG, "stream": True})
    assert streamed.status_code == 200 and streamed.content.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{' not in streamed.content, "no usage chunk without include_usage"
    other = gw.new_tenant("noise")
    chat(gw, other["api_key"], "gpt")
    chat(gw, other["api_key"], "llama")

    gw.flush_usage()
    r = admin.get(f"/admin/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    u = r.json()
    assert set(u) >= {"requests", "prompt_tokens", "completion_tokens", "cost_usd", "by_model"}
    gpt_prompt = 2 * a["prompt_tokens"] + b["prompt_tokens"]  # the streamed request has the same prompt as `a`
    gpt_completion = 2 * a["completion_tokens"] + b["completion_tokens"]
    assert (u["requests"], u["prompt_tokens"], u["completion_tokens"]) == (
        4,
        gpt_prompt + c["prompt_tokens"],
        gpt_completion + c["completion_tokens"],
    )
    by_model = {m["model"]: m for m in u["by_model"]}
    assert len(by_model) == 2, u["by_model"]
    for m in u["by_model"]:
        assert set(m) >= {"model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"}
        assert isinstance(m["cost_usd"], int | float) and m["cost_usd"] >= 0
    gpt = by_model.get("gpt") or by_model["gpt-4o-mini"]
    llama = by_model.get("llama") or by_model["llama3:8b"]
    assert (gpt["requests"], gpt["prompt_tokens"], gpt["completion_tokens"]) == (3, gpt_prompt, gpt_completion)
    assert (llama["requests"], llama["prompt_tokens"], llama["completion_tokens"]) == (
        1,
        c["prompt_tokens"],
        c["completion_tokens"],
    )
    assert llama["cost_usd"] == 0, "ollama is free"
    assert u["cost_usd"] == pytest.approx(sum(m["cost_usd"] for m in u["by_model"]))

    o = admin.get(f"/admin/tenants/{other['id']}/usage").json()
    assert o["requests"] == 2 and {m["requests"] for m in o["by_model"]} == {1}
    error_of(admin.get("/admin/tenants/no-such-tenant/usage"), 404)


def test_usage_of_a_new_tenant_is_zero(gw: RunningGateway, tenant: TenantKey, admin: httpx.Client) -> None:
    u = admin.get(f"/admin/tenants/{tenant.id}/usage").json()
    assert (u["requests"], u["prompt_tokens"], u["completion_tokens"], u["cost_usd"], u["by_model"]) == (0, 0, 0, 0, [])


# -- /v1/models --------------------------------------------------------------------------------------------------


def test_models_list(client: openai.OpenAI, http: httpx.Client) -> None:
    ids = [m.id for m in client.models.list()]
    for alias in ("gpt", "llama", "emb-oai", "emb-local", "slow-gpt", "dead-gpt"):
        assert alias in ids
    for target in ("oai/gpt-4o-mini", "local/llama3:8b", "oai/text-embedding-3-small", "local/nomic-embed-text"):
        assert target in ids
    assert "disabled" not in ids and not any(i.startswith("nokey/") for i in ids), "no enabled target, not listed"
    assert len(ids) == len(set(ids))

    r = http.get("/v1/models")
    assert r.status_code == 200
    body = json.loads(r.content)
    validate("ListModelsResponse", body)
    assert body["object"] == "list"
    for m in body["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]

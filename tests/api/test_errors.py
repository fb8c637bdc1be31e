"""Error responses end to end: every failure is OpenAI-shaped, has the right status, and the gateway keeps serving.

Bad input is always a 4xx (never a 5xx, never a reset connection); upstream failures map to 400 (passed through),
502 or 504; every response carries ``x-request-id``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import Stack, TenantKey
from tests.api.test_streams_faults import bedrock_signed  # noqa: F401 - autouse: no SigV4 rejection, ever
from tests.fakes import faults
from tests.fakes.base import FakeUpstream
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.ledger import ledger
from tests.support.openapi import validate

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello gateway world"}]
GOOD: dict[str, Any] = {"model": "gpt", "messages": MSG}
JSON_CT = {"content-type": "application/json"}


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an OpenAI-shaped JSON error with ``status`` and a request id; return the inner ``error`` object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    validate("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert r.headers.get("x-request-id"), "errors carry x-request-id too"
    err: dict[str, Any] = body["error"]
    return err


def still_serving(http: httpx.Client, model: str = "gpt") -> None:
    r = http.post(CHAT, json={**GOOD, "model": model})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hello gateway world"


# -- 400: the body ---------------------------------------------------------------------------------------------

BAD_BODIES = {
    "empty": b"",
    "blank": b" \r\n\t",
    "not-json": b'{"model": "gpt", messages: [}',
    "truncated": b'{"model": "gpt", "messages": [{"role": "user", "content": "hi"}',
    "invalid-utf8": b'{"model": "gpt", "messages": [{"role": "user", "content": "caf\xc3\x28 \xff\xfe"}]}',
    "deep-array": b"[" * 60_000,  # under max_body_bytes (64 KiB): depth, not size
    "deep-closed-array": b"[" * 5_000 + b"]" * 5_000,
    "array": b'[{"model": "gpt"}]',
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_malformed_body_is_400(name: str, http: httpx.Client, oai: FakeOpenAI) -> None:
    r = http.post(CHAT, content=BAD_BODIES[name], headers=JSON_CT)
    err = error_of(r, 400)
    assert err["type"] == "invalid_request_error"
    assert r.headers["x-aigw-cache"] == "bypass", "on every chat response (contract)"
    assert oai.requests == [], "bad input never reaches the upstream"
    still_serving(http)


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [300, 900, 5_000, 10_000])
def test_absurdly_deep_object_inside_messages_is_400(depth: int, http: httpx.Client, oai: FakeOpenAI) -> None:
    body = '{"model": "gpt", "messages": [{"role": "user", "content": "hi", "meta": ' + nested(depth) + "}]}"
    err = error_of(http.post(CHAT, content=body.encode(), headers=JSON_CT), 400)
    assert err["type"] == "invalid_request_error"
    assert oai.requests == []
    still_serving(http)


FIELD_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("messages-missing", {"messages": None}, "messages"),
    ("model-missing", {"model": None}, "model"),
    ("messages-empty", {"messages": []}, "messages"),
    ("messages-string", {"messages": "hi"}, "messages"),
    ("messages-object", {"messages": {"role": "user", "content": "hi"}}, "messages"),
    ("temperature-string", {"temperature": "hot"}, "temperature"),
    ("temperature-too-high", {"temperature": 7}, "temperature"),
    ("max-tokens-negative", {"max_tokens": -1}, "max_tokens"),
    ("stream-string", {"stream": "yes"}, "stream"),
    ("model-number", {"model": 42}, "model"),
    ("unknown-role", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("content-number", {"messages": [{"role": "user", "content": 5}]}, "messages"),
]


@pytest.mark.parametrize(("patch", "param"), [(p, w) for _, p, w in FIELD_ERRORS], ids=[i for i, _, _ in FIELD_ERRORS])
def test_wrong_field_is_400_naming_the_param(
    patch: dict[str, Any], param: str, http: httpx.Client, oai: FakeOpenAI
) -> None:
    body = {k: v for k, v in {**GOOD, **patch}.items() if v is not None}
    err = error_of(http.post(CHAT, json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["param"], str) and err["param"].startswith(param), err
    assert oai.requests == []
    still_serving(http)


def test_sdk_raises_bad_request(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt", messages=[])
    assert info.value.status_code == 400 and info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt", messages=MSG, temperature=9)  # type: ignore[arg-type]
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt", messages=[{"role": "wizard", "content": "x"}])  # type: ignore[misc,list-item]
    still_serving(http)


# -- 413 -----------------------------------------------------------------------------------------------------


def big_body(size: int) -> bytes:
    return json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "x" * size}]}).encode()


@pytest.mark.parametrize("size", [70 * 1024, 1024 * 1024, 8 * 1024 * 1024])
def test_body_over_limit_with_content_length_is_413(size: int, http: httpx.Client, oai: FakeOpenAI) -> None:
    err = error_of(http.post(CHAT, content=big_body(size), headers=JSON_CT), 413)
    assert err["code"] == "request_too_large"
    assert oai.requests == []
    still_serving(http)


@pytest.mark.parametrize("size", [70 * 1024, 1024 * 1024, 8 * 1024 * 1024])
def test_chunked_body_over_limit_is_413(size: int, http: httpx.Client, oai: FakeOpenAI) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gpt", "messages": [{"role": "user", "content": "'
        for _ in range(size // 4096):
            yield b"y" * 4096
        yield b'"}]}'

    r = http.post(CHAT, content=chunks(), headers=JSON_CT)
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    err = error_of(r, 413)
    assert err["code"] == "request_too_large"
    assert oai.requests == []
    still_serving(http)


def test_body_just_under_limit_is_accepted(http: httpx.Client) -> None:
    body = big_body(60 * 1024)
    assert len(body) < 64 * 1024
    assert http.post(CHAT, content=body, headers=JSON_CT).status_code == 200


# -- 401 -----------------------------------------------------------------------------------------------------

BAD_AUTH = {
    "missing": None,
    "empty": "",
    "bearer-only": "Bearer",
    "basic-scheme": "Basic Z3ctc2stYWJjOmRlZg==",
    "unknown-key": "Bearer gw-sk-this-key-does-not-exist-0123456789abcdef",
}


@pytest.mark.parametrize("path", [CHAT, "/v1/models"])
@pytest.mark.parametrize("case", sorted(BAD_AUTH))
def test_bad_credentials_are_401(case: str, path: str, gw: RunningGateway, http: httpx.Client) -> None:
    value = BAD_AUTH[case]
    headers = {} if value is None else {"authorization": value}
    with httpx.Client(base_url=gw.url, timeout=10) as anon:
        r = anon.request("POST" if path == CHAT else "GET", path, json=GOOD if path == CHAT else None, headers=headers)
    err = error_of(r, 401)
    assert err["type"] == "authentication_error"
    assert (r.headers.get("x-aigw-cache") == "bypass") is (path == CHAT)
    still_serving(http)


def test_wrong_scheme_with_a_valid_key_is_401(gw: RunningGateway, tenant: TenantKey) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        error_of(c.post(CHAT, json=GOOD, headers={"authorization": f"Token {tenant.key}"}), 401)
        error_of(c.post(CHAT, json=GOOD, headers={"authorization": tenant.key}), 401)


def test_revoked_key_is_refused_on_the_next_request(gw: RunningGateway, tenant: TenantKey, http: httpx.Client) -> None:
    still_serving(http)
    assert gw.admin("DELETE", f"/admin/keys/{tenant.key_id}").status_code == 200
    error_of(http.post(CHAT, json=GOOD), 401)
    error_of(http.get("/v1/models"), 401)


@pytest.mark.parametrize("path", [CHAT, "/v1/models"])
def test_admin_key_is_not_a_client_key(path: str, gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=10, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as c:
        r = c.post(path, json=GOOD) if path == CHAT else c.get(path)
    err = error_of(r, 401)
    assert "not a client key" in err["message"]


def test_sdk_raises_authentication_error(gw: RunningGateway) -> None:
    with openai.OpenAI(base_url=gw.base_url, api_key="gw-sk-nope", max_retries=0, timeout=10) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="gpt", messages=MSG)  # type: ignore[arg-type]


# -- 404 / 405 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["no-such-model", "nowhere/gpt-4o-mini", "disabled", "nokey/gpt-4o-mini", "oai/"])
def test_unknown_model_is_404(model: str, client: openai.OpenAI, http: httpx.Client, oai: FakeOpenAI) -> None:
    r = http.post(CHAT, json={**GOOD, "model": model})
    err = error_of(r, 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert r.headers["x-aigw-cache"] == "bypass"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=model, messages=MSG)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    streamed = http.post(CHAT, json={**GOOD, "model": model, "stream": True})
    assert error_of(streamed, 404)["code"] == "model_not_found", "a JSON error, not a stream"
    assert oai.requests == []
    still_serving(http)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nope"), ("POST", "/v1/completion"), ("GET", "/")])
def test_unknown_path_is_404_json(method: str, path: str, http: httpx.Client) -> None:
    error_of(http.request(method, path), 404)
    still_serving(http)


@pytest.mark.parametrize(("method", "path"), [("GET", CHAT), ("PUT", CHAT), ("DELETE", "/v1/models")])
def test_wrong_method_is_405_json(method: str, path: str, http: httpx.Client) -> None:
    error_of(http.request(method, path), 405)
    still_serving(http)


# -- upstream failures -------------------------------------------------------------------------------------------


# alias → (provider name, the target as error messages name it)
UPSTREAMS = {
    "gpt": ("oai", "oai/gpt-4o-mini"),
    "llama": ("local", "local/llama3:8b"),
    "claude": ("claude", "claude/claude-sonnet-4-6"),
    "bedrock": ("aws", "aws/anthropic.claude-3-5-sonnet-20240620-v1:0"),
}


def fake_of(stack: Stack, model: str) -> FakeUpstream:
    fakes: dict[str, FakeUpstream] = {"gpt": stack.oai, "llama": stack.olla, "claude": stack.ant, "bedrock": stack.brk}
    return fakes[model]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", sorted(UPSTREAMS))
def test_upstream_request_error_is_passed_through(model: str, stream: bool, http: httpx.Client, stack: Stack) -> None:
    fake = fake_of(stack, model)
    fake.inject(faults.status(400, "Invalid 'logit_bias': too many keys.", error_type="invalid_request_error"))
    r = http.post(CHAT, json={**GOOD, "model": model, "stream": stream})
    err = error_of(r, 400)  # a JSON error even for a stream: nothing was committed
    if model == "gpt":
        assert err["message"] == "Invalid 'logit_bias': too many keys."
    else:  # Bedrock prefixes the exception's name ("Bedrock ValidationException: ...")
        assert "Invalid 'logit_bias': too many keys." in err["message"], err
    assert err["type"] == "invalid_request_error"
    assert r.headers["x-aigw-provider"] == UPSTREAMS[model][0]
    assert len(fake.requests) == 1, "a request error is not retried"
    still_serving(http, model)


# (alias, upstream status, fault options, what the 502 must quote besides the target)
FAILURES: list[tuple[str, int, dict[str, Any], str]] = [
    *(("gpt", status, {}, "") for status in (401, 403, 404, 429, 500, 503)),
    *(("llama", status, {}, "") for status in (429, 500, 503)),
    ("claude", 401, {}, "credentials"),
    ("claude", 403, {}, "credentials"),
    ("claude", 404, {}, "Not Found"),
    ("claude", 429, {"retry_after": "3", "error_type": "rate_limit_error"}, "rate limit"),
    ("claude", 500, {}, "Internal server error"),
    ("claude", 529, {}, "Overloaded"),  # overloaded_error
    ("bedrock", 403, {}, "credentials"),
    ("bedrock", 404, {}, "ResourceNotFoundException"),
    ("bedrock", 429, {"retry_after": "3"}, "ThrottlingException"),
    ("bedrock", 500, {}, "InternalServerException"),
    ("bedrock", 503, {}, "ServiceUnavailableException"),
]


@pytest.mark.parametrize(
    ("model", "status", "options", "quoted"), FAILURES, ids=[f"{m}-{s}" for m, s, _, _ in FAILURES]
)
def test_upstream_failure_is_502_naming_the_target(
    model: str, status: int, options: dict[str, Any], quoted: str, http: httpx.Client, stack: Stack
) -> None:
    fake = fake_of(stack, model)
    for stream in (False, True):
        fake.inject(faults.status(status, **options))
        err = error_of(http.post(CHAT, json={**GOOD, "model": model, "stream": stream}), 502)
        assert UPSTREAMS[model][1] in err["message"] and quoted in err["message"], err["message"]
    assert len(fake.requests) == 2
    still_serving(http, model)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_credential_errors_do_not_echo_the_key(status: int, http: httpx.Client, oai: FakeOpenAI) -> None:
    oai.inject(faults.status(status, "Incorrect API key provided: sk-fake************-key. See your account."))
    err = error_of(http.post(CHAT, json=GOOD), 502)
    assert "sk-fake" not in err["message"] and "-key." not in err["message"], "tenants never see our key"


def test_upstream_html_error_page_is_502(http: httpx.Client, oai: FakeOpenAI) -> None:
    oai.inject(faults.raw(502, b"<html><body>502 Bad Gateway</body></html>", "text/html"))
    err = error_of(http.post(CHAT, json=GOOD), 502)
    assert "oai/gpt-4o-mini" in err["message"]
    still_serving(http)


def test_ollama_unknown_model_is_502(http: httpx.Client) -> None:
    err = error_of(http.post(CHAT, json={**GOOD, "model": "local/not-a-model"}), 502)
    assert "local/not-a-model" in err["message"]
    still_serving(http)


def test_upstream_timeout_is_504_promptly(http: httpx.Client, oai: FakeOpenAI) -> None:
    oai.inject(faults.hang())
    started = time.monotonic()
    err = error_of(http.post(CHAT, json={**GOOD, "model": "slow-gpt"}), 504)
    assert time.monotonic() - started < 5, "timeout_s is 0.5: the gateway must not wait for the client's 10 s"
    assert "slow/gpt-4o-mini" in err["message"]
    assert oai.wait_for_disconnects(1, timeout=5), "the timed-out upstream request is closed"
    still_serving(http)


def test_connection_refused_is_502(http: httpx.Client) -> None:
    err = error_of(http.post(CHAT, json={**GOOD, "model": "dead-gpt"}), 502)
    assert "dead/gpt-4o-mini" in err["message"]
    still_serving(http)


# -- x-request-id ------------------------------------------------------------------------------------------------


def test_request_id_is_echoed_when_sane(http: httpx.Client) -> None:
    rid = "client-req_0123456789.abc:XYZ"
    assert http.post(CHAT, json=GOOD, headers={"x-request-id": rid}).headers["x-request-id"] == rid
    r = http.post(CHAT, json={**GOOD, "model": "nope"}, headers={"x-request-id": rid})
    assert r.status_code == 404 and r.headers["x-request-id"] == rid


def test_request_id_is_generated_when_absent(http: httpx.Client) -> None:
    ids = {http.post(CHAT, json=GOOD).headers["x-request-id"] for _ in range(3)}
    ids.add(http.post(CHAT, content=b"", headers=JSON_CT).headers["x-request-id"])
    assert len(ids) == 4 and all(len(i) >= 16 for i in ids)


@pytest.mark.parametrize("bad", ["a" * 500, "has spaces in it", "tab\there", ""])
def test_absurd_request_id_is_replaced(bad: str, http: httpx.Client) -> None:
    r = http.post(CHAT, json=GOOD, headers={"x-request-id": bad})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert rid != bad and len(rid) >= 16 and rid.isascii() and rid.isprintable() and " " not in rid


# -- failures are metered ----------------------------------------------------------------------------------------


def test_failed_requests_are_recorded_with_their_status(
    gw: RunningGateway, tenant: TenantKey, http: httpx.Client, oai: FakeOpenAI
) -> None:
    oai.inject(faults.status(500))
    failed = http.post(CHAT, json=GOOD, headers={"x-request-id": "failed-request-0001"})
    assert failed.status_code == 502
    gw.flush_usage()
    usage = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage")
    assert usage.status_code == 200
    summary = usage.json()
    assert summary["requests"] == 1
    assert summary["prompt_tokens"] == 0 and summary["completion_tokens"] == 0
    rows = ledger(gw, tenant.id)
    assert [(r["request_id"], r["status"]) for r in rows] == [("failed-request-0001", 502)]
    assert rows[0]["prompt_tokens"] == 0 and rows[0]["completion_tokens"] == 0

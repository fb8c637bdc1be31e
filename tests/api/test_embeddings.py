"""Embeddings end to end: the official openai SDK → the real gateway → fake OpenAI (/v1/embeddings) and fake Ollama
(native /api/embed). Both aliases must look the same to an unchanged client, in both encodings."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import TenantKey
from tests.fakes import text
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.openapi import validate

ALIASES = {"emb-oai": "oai", "emb-local": "local"}
INPUTS = ["the quick brown fox", "jumps over", "the lazy dog today"]

pytestmark = pytest.mark.parametrize("alias", sorted(ALIASES))


def dim_of(alias: str, oai: FakeOpenAI, olla: FakeOllama) -> int:
    return oai.embedding_dim if ALIASES[alias] == "oai" else olla.embedding_dim


def expected(seed: str, dim: int) -> list[float]:
    """The fake's own vector for ``seed`` (float32-exact, so both encodings must reproduce it bit for bit)."""
    return text.embedding_vector(seed, dim)


def decode_b64(value: str) -> list[float]:
    raw = base64.b64decode(value, validate=True)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def upstream_calls(alias: str, oai: FakeOpenAI, olla: FakeOllama) -> int:
    if ALIASES[alias] == "oai":
        return len(oai.requests_to("/v1/embeddings"))
    return len(olla.requests_to("/api/embed"))


def ledger(gw: RunningGateway, tenant: TenantKey) -> dict[str, Any]:
    gw.flush_usage()
    r = gw.admin("GET", f"/admin/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def assert_openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    out: dict[str, Any] = err
    return out


def test_sdk_default_base64_and_float_agree(
    alias: str, client: openai.OpenAI, gw: RunningGateway, oai: FakeOpenAI, olla: FakeOllama
) -> None:
    dim = dim_of(alias, oai, olla)
    want = expected(INPUTS[0], dim)

    raw_default = client.embeddings.with_raw_response.create(model=alias, input=INPUTS[0])
    assert raw_default.headers["x-aigw-provider"] == ALIASES[alias]
    assert raw_default.http_response.status_code == 200
    default = raw_default.parse()

    # The SDK asks for base64 when the caller names no encoding, and decodes it itself.
    assert json.loads(raw_default.http_request.content)["encoding_format"] == "base64"
    body = json.loads(raw_default.http_response.content)
    validate("CreateEmbeddingResponse", body, base64_embeddings=True)
    assert isinstance(body["data"][0]["embedding"], str)
    assert decode_b64(body["data"][0]["embedding"]) == want

    as_float = client.embeddings.with_raw_response.create(model=alias, input=INPUTS[0], encoding_format="float")
    assert as_float.headers["x-aigw-provider"] == ALIASES[alias]
    float_body = json.loads(as_float.http_response.content)
    validate("CreateEmbeddingResponse", float_body)
    assert float_body["data"][0]["embedding"] == want

    floats = as_float.parse()
    assert len(default.data) == len(floats.data) == 1
    assert default.data[0].embedding == floats.data[0].embedding == want
    assert len(want) == dim
    assert default.data[0].index == 0 and default.object == "list"


def test_list_input_one_embedding_per_item(
    alias: str, client: openai.OpenAI, oai: FakeOpenAI, olla: FakeOllama
) -> None:
    dim = dim_of(alias, oai, olla)
    want = [expected(seed, dim) for seed in INPUTS]
    for fmt in (openai.omit, "base64", "float"):
        raw = client.embeddings.with_raw_response.create(model=alias, input=INPUTS, encoding_format=fmt)
        body = json.loads(raw.http_response.content)
        validate("CreateEmbeddingResponse", body, base64_embeddings=fmt != "float")
        assert [d["index"] for d in body["data"]] == [0, 1, 2], fmt
        resp = raw.parse()
        assert [d.index for d in resp.data] == [0, 1, 2]
        # An explicit "base64" hands the caller the string; the SDK decodes only the base64 it asked for itself.
        got = [decode_b64(d.embedding) if isinstance(d.embedding, str) else d.embedding for d in resp.data]
        assert got == want, fmt
        assert resp.usage.prompt_tokens == sum(text.count_tokens(s) for s in INPUTS)


def test_usage_reported_and_recorded(
    alias: str, client: openai.OpenAI, gw: RunningGateway, tenant: TenantKey, oai: FakeOpenAI, olla: FakeOllama
) -> None:
    first = client.embeddings.create(model=alias, input=INPUTS[0])
    second = client.embeddings.create(model=alias, input=INPUTS[1:], encoding_format="float")
    for resp in (first, second):
        assert resp.usage.prompt_tokens > 0
        assert resp.usage.total_tokens == resp.usage.prompt_tokens
    assert first.usage.prompt_tokens == text.count_tokens(INPUTS[0])
    assert upstream_calls(alias, oai, olla) == 2

    usage = ledger(gw, tenant)
    assert usage["requests"] == 2
    assert usage["prompt_tokens"] == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert usage["completion_tokens"] == 0
    assert sum(m["requests"] for m in usage["by_model"]) == 2


def test_token_id_input(
    alias: str, http: httpx.Client, client: openai.OpenAI, oai: FakeOpenAI, olla: FakeOllama
) -> None:
    r = http.post("/v1/embeddings", json={"model": alias, "input": [[101, 2023, 102]], "encoding_format": "float"})
    if ALIASES[alias] == "local":
        err = assert_openai_error(r)  # Ollama's /api/embed takes text only: refused, upstream never called
        assert err["param"] == "input"
        assert upstream_calls(alias, oai, olla) == 0
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=alias, input=[1, 2, 3])
        assert info.value.status_code == 400
    else:
        assert r.status_code == 200, r.text
        assert r.headers["x-aigw-provider"] == "oai"
        validate("CreateEmbeddingResponse", r.json())
        assert r.json()["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-input"),
        pytest.param({"input": 5}, id="input-number"),
        pytest.param({"input": {"text": "hi"}}, id="input-object"),
        pytest.param({"input": None}, id="input-null"),
        pytest.param({"input": []}, id="input-empty-list"),
        pytest.param({"input": [["a"]]}, id="input-nested-strings"),
        pytest.param({"input": "hi", "encoding_format": "hex"}, id="bad-encoding"),
        pytest.param({"input": "hi", "dimensions": "many"}, id="dimensions-string"),
    ],
)
def test_bad_input_is_400(alias: str, body: dict[str, Any], http: httpx.Client) -> None:
    r = http.post("/v1/embeddings", json={"model": alias, **body})
    assert_openai_error(r)


def test_bad_body_is_400(alias: str, http: httpx.Client) -> None:
    for content in (b"", b"not json", b"[1, 2]", b'{"model": "' + alias.encode() + b'", "input": "\xff"}'):
        r = http.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
        assert_openai_error(r)
    r = http.post("/v1/embeddings", json={"input": "hi"})  # no model
    assert_openai_error(r)


def test_unknown_key_is_401(alias: str, gw: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=gw.base_url, api_key="gw-sk-nope", max_retries=0, timeout=10) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.embeddings.create(model=alias, input="hi")

"""Embeddings end to end: the official openai SDK → the real gateway → fake OpenAI (/v1/embeddings), fake Ollama
(native /api/embed) and fake Bedrock (Titan V2 through InvokeModel, one text per call: the transport fans a list
out). All aliases must look the same to an unchanged client, in both encodings."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import Stack, TenantKey
from tests.api.test_streams_faults import bedrock_signed  # noqa: F401 - autouse: no SigV4 rejection, ever
from tests.fakes import faults, text
from tests.fakes.faults import RecordedRequest
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.openapi import validate

ALIASES = {"emb-oai": "oai", "emb-local": "local", "emb-titan": "aws"}
TITAN_DIM = 1024  # Titan Text Embeddings V2's default (the gateway sends no `dimensions` unless asked)
INPUTS = ["the quick brown fox", "jumps over", "the lazy dog today"]

pytestmark = pytest.mark.parametrize("alias", sorted(ALIASES))


def dim_of(alias: str, oai: FakeOpenAI, olla: FakeOllama) -> int:
    return {"oai": oai.embedding_dim, "local": olla.embedding_dim, "aws": TITAN_DIM}[ALIASES[alias]]


def expected(seed: str, dim: int) -> list[float]:
    """The fake's own vector for ``seed`` (float32-exact, so both encodings must reproduce it bit for bit)."""
    return text.embedding_vector(seed, dim)


def decode_b64(value: str) -> list[float]:
    raw = base64.b64decode(value, validate=True)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def titan_calls(stack: Stack) -> list[RecordedRequest]:
    return stack.brk.requests_to("/model/amazon.titan-embed-text-v2:0/invoke")


def upstream_calls(alias: str, oai: FakeOpenAI, olla: FakeOllama, stack: Stack | None = None) -> int:
    if ALIASES[alias] == "oai":
        return len(oai.requests_to("/v1/embeddings"))
    if ALIASES[alias] == "aws":
        assert stack is not None
        return len(titan_calls(stack))
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
    alias: str, client: openai.OpenAI, oai: FakeOpenAI, olla: FakeOllama, stack: Stack
) -> None:
    dim = dim_of(alias, oai, olla)
    want = [expected(seed, dim) for seed in INPUTS]
    calls = 0
    for fmt in (openai.omit, "base64", "float"):
        raw = client.embeddings.with_raw_response.create(model=alias, input=INPUTS, encoding_format=fmt)
        # Titan embeds one text per InvokeModel call: one upstream request per item, each its own text.
        calls += len(INPUTS) if alias == "emb-titan" else 1
        assert upstream_calls(alias, oai, olla, stack) == calls
        if alias == "emb-titan":
            assert sorted(r.json["inputText"] for r in titan_calls(stack)[-3:]) == sorted(INPUTS)
            assert all(r.json == {"inputText": r.json["inputText"]} for r in titan_calls(stack))
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
    alias: str,
    client: openai.OpenAI,
    gw: RunningGateway,
    tenant: TenantKey,
    oai: FakeOpenAI,
    olla: FakeOllama,
    stack: Stack,
) -> None:
    first = client.embeddings.create(model=alias, input=INPUTS[0])
    second = client.embeddings.create(model=alias, input=INPUTS[1:], encoding_format="float")
    for resp in (first, second):
        assert resp.usage.prompt_tokens > 0
        assert resp.usage.total_tokens == resp.usage.prompt_tokens
    assert first.usage.prompt_tokens == text.count_tokens(INPUTS[0])
    assert second.usage.prompt_tokens == sum(text.count_tokens(s) for s in INPUTS[1:])
    assert upstream_calls(alias, oai, olla, stack) == (3 if alias == "emb-titan" else 2)

    usage = ledger(gw, tenant)
    assert usage["requests"] == 2
    assert usage["prompt_tokens"] == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert usage["completion_tokens"] == 0
    assert sum(m["requests"] for m in usage["by_model"]) == 2


def test_token_id_input(
    alias: str, http: httpx.Client, client: openai.OpenAI, oai: FakeOpenAI, olla: FakeOllama, stack: Stack
) -> None:
    r = http.post("/v1/embeddings", json={"model": alias, "input": [[101, 2023, 102]], "encoding_format": "float"})
    if ALIASES[alias] in ("local", "aws"):
        err = assert_openai_error(r)  # Ollama's /api/embed and Titan take text only: refused, upstream never called
        assert err["param"] == "input"
        assert upstream_calls(alias, oai, olla, stack) == 0
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=alias, input=[1, 2, 3])
        assert info.value.status_code == 400
    else:
        assert r.status_code == 200, r.text
        assert r.headers["x-aigw-provider"] == "oai"
        validate("CreateEmbeddingResponse", r.json())
        assert r.json()["usage"]["prompt_tokens"] == 3


def test_upstream_failure_is_502_naming_the_target(
    alias: str, http: httpx.Client, gw: RunningGateway, tenant: TenantKey, stack: Stack
) -> None:
    fake = {"oai": stack.oai, "local": stack.olla, "aws": stack.brk}[ALIASES[alias]]
    target = {"emb-oai": "oai/text-embedding-3-small", "emb-local": "local/nomic-embed-text"}
    fake.inject(faults.status(429, retry_after="1"))  # for Titan: one of the three fanned-out calls
    r = http.post("/v1/embeddings", json={"model": alias, "input": INPUTS})
    assert r.status_code == 502, r.text
    assert target.get(alias, "aws/amazon.titan-embed-text-v2:0") in r.json()["error"]["message"]
    usage = ledger(gw, tenant)
    assert (usage["requests"], usage["prompt_tokens"]) == (1, 0)
    ok = http.post("/v1/embeddings", json={"model": alias, "input": INPUTS, "encoding_format": "float"})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 3, "the gateway keeps serving"


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

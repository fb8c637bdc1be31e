"""FakeBedrock speaks the real protocol: driven by boto3's own ``bedrock-runtime`` client (its serializer, SigV4
signer and event-stream parser), and it rejects what AWS rejects -- including a request signed with the wrong key,
which proves it really verifies signatures (and so that the gateway's signer, accepted below, signs like AWS)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import boto3
import httpx
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from yarl import URL

from aigw.providers.eventstream import EventStreamParser
from aigw.providers.sigv4 import SigV4Signer
from tests.fakes import faults, text
from tests.fakes.bedrock_fake import FakeBedrock

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
HELLO = [{"role": "user", "content": [{"text": "hello   there\nworld"}]}]
WEATHER = {
    "toolSpec": {
        "name": "get_weather",
        "description": "Weather for a city",
        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
}
TIME = {
    "toolSpec": {
        "name": "get_time",
        "inputSchema": {"json": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    }
}


@pytest.fixture(autouse=True)
def isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No developer AWS configuration (profiles, retry modes, endpoints) leaks into these tests."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as f:
        yield f


def make_client(fake: FakeBedrock, **overrides: Any) -> BaseClient:
    params: dict[str, Any] = {
        "endpoint_url": fake.url,
        "region_name": fake.region,
        "aws_access_key_id": fake.access_key,
        "aws_secret_access_key": fake.secret_key,
        "config": Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10),
    }
    params.update(overrides)
    return boto3.client("bedrock-runtime", **params)


@pytest.fixture
def client(fake: FakeBedrock) -> Iterator[BaseClient]:
    c = make_client(fake)
    yield c
    c.close()


def error_of(exc: ClientError) -> tuple[int, str, str]:
    return (
        exc.response["ResponseMetadata"]["HTTPStatusCode"],
        exc.response["Error"]["Code"],
        exc.response["Error"]["Message"],
    )


# ---- Converse ----------------------------------------------------------------------------------------------------


def test_converse_text(client: BaseClient, fake: FakeBedrock) -> None:
    r = client.converse(
        modelId=CLAUDE, messages=HELLO, system=[{"text": "be brief"}], inferenceConfig={"temperature": 0.5}
    )
    assert r["output"]["message"] == {"role": "assistant", "content": [{"text": "Echo: hello there world"}]}
    assert r["stopReason"] == "end_turn"
    # Prompt tokens = words of every message (system included), completion = words of the reply.
    assert r["usage"] == {"inputTokens": 5, "outputTokens": 4, "totalTokens": 9}
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    # boto3 percent-encodes the model id in the path and signs that path; the fake saw it byte for byte.
    assert fake.raw_paths == [f"/model/{CLAUDE.replace(':', '%3A')}/converse"]
    assert fake.last_request.json["inferenceConfig"] == {"temperature": 0.5}
    assert fake.last_request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKEBEDROCK00001/")


def test_stop_sequence_and_max_tokens(client: BaseClient) -> None:
    r = client.converse(modelId=CLAUDE, messages=HELLO, inferenceConfig={"stopSequences": ["there"]})
    assert (r["output"]["message"]["content"], r["stopReason"]) == ([{"text": "Echo: hello "}], "stop_sequence")
    r = client.converse(modelId=CLAUDE, messages=HELLO, inferenceConfig={"maxTokens": 2})
    assert (r["output"]["message"]["content"], r["stopReason"]) == ([{"text": "Echo: hello"}], "max_tokens")
    assert r["usage"]["outputTokens"] == 2


def test_converse_stream(client: BaseClient, fake: FakeBedrock) -> None:
    events = list(client.converse_stream(modelId=CLAUDE, messages=HELLO)["stream"])
    assert events[0] == {"messageStart": {"role": "assistant"}}
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert "".join(d["delta"]["text"] for d in deltas) == "Echo: hello there world"
    assert {d["contentBlockIndex"] for d in deltas} == {0}
    assert events[-3:-1] == [
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
    ]
    assert events[-1]["metadata"]["usage"] == {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}
    # The raw body: application/vnd.amazon.eventstream frames our own parser reads too.
    raw = fake.last_request
    assert raw.streamed and raw.chunks_sent == len(events)


def test_tool_use_round_trip(client: BaseClient) -> None:
    ask = [{"role": "user", "content": [{"text": "weather in Paris"}]}]
    r = client.converse(modelId=CLAUDE, messages=ask, toolConfig={"tools": [WEATHER, TIME]})
    assert r["stopReason"] == "tool_use"
    (block,) = r["output"]["message"]["content"]
    call = block["toolUse"]
    assert call["name"] == "get_weather" and call["input"] == {"city": "weather in Paris"}
    assert call["toolUseId"].startswith("tooluse_") and len(call["toolUseId"]) == 30
    history = [
        *ask,
        r["output"]["message"],
        {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"], "content": [{"text": "11 C"}]}}]},
    ]
    r2 = client.converse(modelId=CLAUDE, messages=history, toolConfig={"tools": [WEATHER, TIME]})
    assert r2["output"]["message"]["content"] == [{"text": "Echo: 11 C"}]
    assert r2["stopReason"] == "end_turn"


def test_parallel_tool_calls_stream(client: BaseClient) -> None:
    ask = [{"role": "user", "content": [{"text": "parallel please"}]}]
    events = list(client.converse_stream(modelId=CLAUDE, messages=ask, toolConfig={"tools": [WEATHER, TIME]})["stream"])
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert [(s["contentBlockIndex"], s["start"]["toolUse"]["name"]) for s in starts] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]
    for index, expected in [(0, {"city": "parallel please"}), (1, {"tz": "parallel please"})]:
        fragments = [
            e["contentBlockDelta"]["delta"]["toolUse"]["input"]
            for e in events
            if "contentBlockDelta" in e and e["contentBlockDelta"]["contentBlockIndex"] == index
        ]
        assert len(fragments) > 1  # streamed in pieces
        assert json.loads("".join(fragments)) == expected
    assert {"messageStop": {"stopReason": "tool_use"}} in events


def test_named_tool_choice(client: BaseClient) -> None:
    config = {"tools": [WEATHER, TIME], "toolChoice": {"tool": {"name": "get_time"}}}
    r = client.converse(modelId=CLAUDE, messages=HELLO, toolConfig=config)
    assert r["output"]["message"]["content"][0]["toolUse"]["name"] == "get_time"


# ---- validation (400 ValidationException) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "tool_config", "needle"),
    [
        ([{"role": "assistant", "content": [{"text": "hi"}]}], None, "must start with a user message"),
        ([*HELLO, *HELLO], None, "must alternate between user and assistant roles"),
        ([{"role": "user", "content": [{"text": " "}]}], None, "is blank"),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}],
                },
            ],
            None,
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        ),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}],
                },
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t2", "content": [{"text": "x"}]}}]},
            ],
            {"tools": [WEATHER]},
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
    ],
)
def test_validation_exceptions(
    client: BaseClient, messages: list[Any], tool_config: dict[str, Any] | None, needle: str
) -> None:
    kwargs: dict[str, Any] = {"toolConfig": tool_config} if tool_config else {}
    with pytest.raises(ClientError) as ei:
        client.converse(modelId=CLAUDE, messages=messages, **kwargs)
    status, code, message = error_of(ei.value)
    assert (status, code) == (400, "ValidationException")
    assert needle in message


def test_unknown_model_and_out_of_range_temperature(client: BaseClient) -> None:
    with pytest.raises(ClientError) as ei:
        client.converse(modelId="anthropic.claude-nope-v9:0", messages=HELLO)
    assert error_of(ei.value) == (400, "ValidationException", "The provided model identifier is invalid.")
    with pytest.raises(ClientError) as ei:
        client.converse(modelId=CLAUDE, messages=HELLO, inferenceConfig={"temperature": 1.5})
    assert error_of(ei.value)[1] == "ValidationException"


# ---- embeddings (InvokeModel) ------------------------------------------------------------------------------------


def test_titan_v2_invoke(client: BaseClient) -> None:
    r = client.invoke_model(
        modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "hi there", "dimensions": 256})
    )
    body = json.loads(r["body"].read())
    assert body["embedding"] == text.embedding_vector("hi there", 256)
    assert body["embeddingsByType"] == {"float": body["embedding"]}
    assert body["inputTextTokenCount"] == 2
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "2"


def test_titan_v1_rejects_v2_parameters(client: BaseClient) -> None:
    r = client.invoke_model(modelId="amazon.titan-embed-text-v1", body=json.dumps({"inputText": "hi"}))
    assert len(json.loads(r["body"].read())["embedding"]) == 1536
    with pytest.raises(ClientError) as ei:
        client.invoke_model(
            modelId="amazon.titan-embed-text-v1", body=json.dumps({"inputText": "hi", "dimensions": 256})
        )
    assert "extraneous key [dimensions]" in error_of(ei.value)[2]


def test_cohere_invoke(client: BaseClient) -> None:
    body = {"texts": ["hello", "big world"], "input_type": "search_document"}
    r = client.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps(body))
    out = json.loads(r["body"].read())
    assert out["embeddings"] == [text.embedding_vector("hello", 1024), text.embedding_vector("big world", 1024)]
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "3"


# ---- faults ------------------------------------------------------------------------------------------------------


def test_throttling_status_fault(client: BaseClient, fake: FakeBedrock) -> None:
    fake.inject(faults.status(429))
    with pytest.raises(client.exceptions.ThrottlingException) as ei:
        client.converse(modelId=CLAUDE, messages=HELLO)
    assert error_of(ei.value) == (429, "ThrottlingException", "Too many requests, please wait before trying again.")


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "ValidationException"), (500, "InternalServerException"), (503, "ServiceUnavailableException")],
)
def test_status_faults_in_aws_shape(client: BaseClient, fake: FakeBedrock, status: int, code: str) -> None:
    fake.inject(faults.status(status, "boom"))
    with pytest.raises(ClientError) as ei:
        client.converse(modelId=CLAUDE, messages=HELLO)
    assert error_of(ei.value) == (status, code, "boom")


def test_model_not_ready_via_code(client: BaseClient, fake: FakeBedrock) -> None:
    fake.inject(faults.status(429, code="ModelNotReadyException"))
    with pytest.raises(client.exceptions.ModelNotReadyException):
        client.converse(modelId=CLAUDE, messages=HELLO)


@pytest.mark.parametrize("exception_type", ["modelStreamErrorException", "throttlingException"])
def test_mid_stream_exception_frame(client: BaseClient, fake: FakeBedrock, exception_type: str) -> None:
    fake.stream_exception_type = exception_type
    fake.inject(faults.error_after(3, "stream broke"), path=f"/model/{CLAUDE}/converse-stream")
    seen: list[dict[str, Any]] = []
    with pytest.raises(EventStreamError) as ei:
        seen.extend(client.converse_stream(modelId=CLAUDE, messages=HELLO)["stream"])
    assert len(seen) == 3
    assert ei.value.response["Error"] == {"Code": exception_type, "Message": "stream broke"}


def test_drop_after_cuts_the_stream_mid_body(fake: FakeBedrock) -> None:
    fake.inject(faults.drop_after(2))
    with pytest.raises(Exception):  # noqa: B017 - boto3 surfaces the broken body as a urllib3/botocore error
        list(make_client(fake).converse_stream(modelId=CLAUDE, messages=HELLO)["stream"])
    assert fake.last_request.wait_done() and fake.last_request.outcome == "dropped"


# ---- SigV4 verification ------------------------------------------------------------------------------------------


def test_wrong_secret_key_is_rejected(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as ei:
        make_client(fake, aws_secret_access_key="not-the-secret").converse(modelId=CLAUDE, messages=HELLO)
    status, code, message = error_of(ei.value)
    assert (status, code) == (403, "InvalidSignatureException")
    assert message.startswith("The request signature we calculated does not match")
    assert fake.last_request.status == 403


def test_unknown_access_key_and_session_tokens() -> None:
    with FakeBedrock(session_token="FQoGZXIvYXdzEJr//token") as fake:
        with pytest.raises(ClientError) as ei:
            make_client(fake).converse(modelId=CLAUDE, messages=HELLO)  # no session token
        assert error_of(ei.value)[:2] == (403, "UnrecognizedClientException")
        with pytest.raises(ClientError) as ei:
            make_client(fake, aws_access_key_id="AKIDSOMEONEELSE", aws_session_token=fake.session_token).converse(
                modelId=CLAUDE, messages=HELLO
            )
        assert error_of(ei.value)[:2] == (403, "UnrecognizedClientException")
        ok = make_client(fake, aws_session_token=fake.session_token).converse(modelId=CLAUDE, messages=HELLO)
        assert ok["stopReason"] == "end_turn"
        assert fake.last_request.headers["x-amz-security-token"] == fake.session_token


@pytest.mark.parametrize(("offset", "words"), [(600, "Signature expired"), (-600, "Signature not yet current")])
def test_stale_or_future_dates_are_rejected(offset: float, words: str) -> None:
    with FakeBedrock(clock=lambda: time.time() + offset) as fake, pytest.raises(ClientError) as ei:
        make_client(fake).converse(modelId=CLAUDE, messages=HELLO)
    status, code, message = error_of(ei.value)
    assert (status, code) == (403, "InvalidSignatureException")
    assert message.startswith(words)


def test_other_region_is_rejected(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as ei:
        make_client(fake, region_name="eu-west-1").converse(modelId=CLAUDE, messages=HELLO)
    assert error_of(ei.value)[:2] == (403, "InvalidSignatureException")


def test_unsigned_request_is_rejected(fake: FakeBedrock) -> None:
    r = httpx.post(f"{fake.url}/model/{CLAUDE}/converse", json={"messages": HELLO}, timeout=10)
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException:")
    assert r.json() == {"message": "Missing Authentication Token"}


# ---- the gateway's signer against the fake -----------------------------------------------------------------------


@pytest.fixture
def signer(fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> SigV4Signer:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.secret_key)
    return SigV4Signer(fake.region)


def converse_url(fake: FakeBedrock, op: str = "converse") -> str:
    return f"{fake.url}/model/{CLAUDE.replace(':', '%3A')}/{op}"


def test_sigv4_signer_is_accepted_over_httpx(fake: FakeBedrock, signer: SigV4Signer) -> None:
    url, body = converse_url(fake), json.dumps({"messages": HELLO}).encode()
    headers = signer.sign("POST", url, {"content-type": "application/json", "user-agent": "aigw-test"}, body)
    r = httpx.post(url, content=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["output"]["message"]["content"] == [{"text": "Echo: hello there world"}]


async def test_sigv4_signer_is_accepted_over_aiohttp_with_an_encoded_url(
    fake: FakeBedrock, signer: SigV4Signer
) -> None:
    url, body = converse_url(fake, "converse-stream"), json.dumps({"messages": HELLO}).encode()
    headers = signer.sign("POST", url, {"content-type": "application/json"}, body)
    # encoded=True: the path goes out exactly as signed. (The gateway's transport must do the same.)
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(url, encoded=True), data=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
        raw = await resp.read()
    parser = EventStreamParser()
    events = parser.feed(raw) + parser.close()
    types = [e.type for e in events]
    assert types[0] == "messageStart"
    assert types[-2:] == ["messageStop", "metadata"]


async def test_aiohttp_with_a_plain_string_url_breaks_the_signature(fake: FakeBedrock, signer: SigV4Signer) -> None:
    # yarl re-quotes a str URL and sends %3A as ':' -- the signed path is no longer the sent path, and AWS (like
    # the fake) answers 403. This is why the transport has to hand aiohttp yarl.URL(url, encoded=True).
    url, body = converse_url(fake), json.dumps({"messages": HELLO}).encode()
    headers = signer.sign("POST", url, {"content-type": "application/json"}, body)
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    assert fake.raw_paths[-1] == f"/model/{CLAUDE}/converse"


def test_tampered_body_is_rejected(fake: FakeBedrock, signer: SigV4Signer) -> None:
    url, body = converse_url(fake), json.dumps({"messages": HELLO}).encode()
    headers = signer.sign("POST", url, {"content-type": "application/json"}, body)
    r = httpx.post(url, content=body.replace(b"hello", b"HELLO"), headers=headers, timeout=10)
    assert r.status_code == 403
    assert r.json()["message"].startswith("The request signature we calculated does not match")

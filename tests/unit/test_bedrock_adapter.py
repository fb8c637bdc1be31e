"""BedrockAdapter decoding: Converse answers → OpenAI bodies, Bedrock errors → the gateway's error tree, Titan and
Cohere embeddings -- from fixtures in tests/fixtures/bedrock (no HTTP). Every OpenAI body is checked against the
official OpenAI schema."""

from __future__ import annotations

import array
import base64
import struct
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from aigw.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from aigw.providers.base import ChatAdapter, EmbeddingsAdapter, EmbeddingsInput, Framing, StreamIdentity
from aigw.providers.bedrock import BedrockAdapter
from aigw.providers.bedrock.request import NO_TOOLS_PLACEHOLDER
from aigw.schema.embeddings import EmbeddingRequest
from aigw.schema.usage import Usage
from tests.support import openapi

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bedrock"
IDENT = StreamIdentity(id="chatcmpl-bedrock123", created=1_764_000_000)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_satisfies_the_protocols() -> None:
    adapter = BedrockAdapter()
    chat_adapter: ChatAdapter = adapter
    emb_adapter: EmbeddingsAdapter = adapter
    assert chat_adapter.framing is Framing.AWS_EVENTSTREAM
    assert emb_adapter is adapter


def test_the_checks_can_fail() -> None:
    with pytest.raises(openapi.SchemaError):
        openapi.validate("CreateChatCompletionResponse", {"id": "x", "object": "chat.completion"})


# ---- response ----------------------------------------------------------------------------------------------------


def decode(
    name: str | bytes, model: str = "my-claude", *, single_tool_call: bool = False
) -> tuple[Any, dict[str, Any]]:
    raw = fixture(name) if isinstance(name, str) else name
    completion = BedrockAdapter().decode_chat(raw, model=model, ident=IDENT, single_tool_call=single_tool_call)
    body: dict[str, Any] = orjson.loads(completion.body)
    openapi.validate("CreateChatCompletionResponse", body)
    return completion, body


def test_decode_text() -> None:
    completion, body = decode("converse_text.json")
    assert body == {
        "id": "chatcmpl-bedrock123",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "my-claude",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Rayleigh scattering makes the sky blue.", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 25,
            "completion_tokens": 9,
            "total_tokens": 34,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert completion.usage == Usage(prompt_tokens=25, completion_tokens=9)
    assert (completion.response_model, completion.finish_reason) == ("my-claude", "stop")


def test_decode_parallel_tool_calls() -> None:
    completion, body = decode("converse_tools.json")
    message = body["choices"][0]["message"]
    assert message["content"] == "I'll look up both cities."
    calls = [(c["id"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    assert calls == [
        ("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "function", "get_weather", '{"city":"Paris","unit":"c"}'),
        ("tooluse_Xb9L2mGQTkWPqz0H7dY1sA", "function", "get_weather", '{"city":"Tokyo","unit":"c"}'),
        ("tooluse_3fHq8TnWRbuJ5kPpLx2v9g", "function", "get_time", "{}"),
    ]
    assert all(set(c) == {"id", "type", "function"} for c in message["tool_calls"])
    assert body["choices"][0]["finish_reason"] == completion.finish_reason == "tool_calls"


@pytest.mark.parametrize(("single_tool_call", "count"), [(True, 1), (False, 3)])
def test_parallel_tool_calls_false_keeps_the_first_call(single_tool_call: bool, count: int) -> None:
    # Converse cannot be told parallel_tool_calls: false, so the answer keeps only its first call instead.
    completion, body = decode("converse_tools.json", single_tool_call=single_tool_call)
    message = body["choices"][0]["message"]
    assert message["content"] == "I'll look up both cities."
    assert len(message["tool_calls"]) == count
    assert message["tool_calls"][0]["id"] == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris","unit":"c"}'}
    assert body["choices"][0]["finish_reason"] == completion.finish_reason == "tool_calls"
    # The dropped calls' tokens were still generated (and billed) upstream.
    assert completion.usage == Usage(prompt_tokens=375, completion_tokens=146)
    assert body["usage"]["completion_tokens"] == 146


def test_single_tool_call_keeps_the_first_real_call_after_a_placeholder_call() -> None:
    raw = orjson.loads(fixture("converse_tools.json"))
    content = raw["output"]["message"]["content"]
    placeholder = {"toolUse": {"toolUseId": "tooluse_x", "name": NO_TOOLS_PLACEHOLDER, "input": {}}}
    raw["output"]["message"]["content"] = [placeholder, *content[2:]]
    _, body = decode(orjson.dumps(raw), single_tool_call=True)
    assert [c["id"] for c in body["choices"][0]["message"]["tool_calls"]] == ["tooluse_Xb9L2mGQTkWPqz0H7dY1sA"]


def test_decode_tool_calls_without_text_have_null_content() -> None:
    raw = orjson.loads(fixture("converse_tools.json"))
    raw["output"]["message"]["content"] = raw["output"]["message"]["content"][1:]
    _, body = decode(orjson.dumps(raw))
    assert body["choices"][0]["message"]["content"] is None


def test_a_call_to_the_no_tools_placeholder_is_dropped() -> None:
    raw = orjson.loads(fixture("converse_tools.json"))
    raw["output"]["message"]["content"] = [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_x", "name": NO_TOOLS_PLACEHOLDER, "input": {}}},
    ]
    completion, body = decode(orjson.dumps(raw))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Let me check.", "refusal": None}
    assert completion.finish_reason == "stop"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("tool_use", "stop"),  # a tool_use stop with no toolUse block decoded cannot claim tool_calls
        ("malformed_model_output", "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    raw = orjson.loads(fixture("converse_text.json")) | {"stopReason": stop_reason}
    completion, body = decode(orjson.dumps(raw))
    assert body["choices"][0]["finish_reason"] == completion.finish_reason == finish


def test_decode_fixtures_stop_reasons() -> None:
    assert decode("converse_max_tokens.json")[0].finish_reason == "length"
    _, body = decode("converse_guardrail.json")
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == "Sorry, the model cannot answer this question."


def test_decode_cache_usage() -> None:
    completion, body = decode("converse_cached.json")
    # Bedrock's inputTokens excludes cache reads and writes; OpenAI's prompt_tokens includes them.
    assert completion.usage == Usage(
        prompt_tokens=2068, completion_tokens=10, cached_prompt_tokens=1800, cache_write_tokens=254
    )
    assert body["usage"] == {
        "prompt_tokens": 2068,
        "completion_tokens": 10,
        "total_tokens": 2078,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }


def test_decode_drops_reasoning_content() -> None:
    _, body = decode("converse_reasoning.json")
    assert body["choices"][0]["message"]["content"] == "4"


@pytest.mark.parametrize("raw", [b"<html>bad gateway</html>", b"[1]", b'{"output": {}}', b'{"stopReason": "end_turn"}'])
def test_decode_rejects_what_is_not_a_converse_response(raw: bytes) -> None:
    with pytest.raises(UpstreamError) as ei:
        BedrockAdapter().decode_chat(raw, model="m", ident=IDENT)
    assert ei.value.upstream_status == 502


# ---- errors ------------------------------------------------------------------------------------------------------

NS = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


@pytest.mark.parametrize(
    ("status", "kind", "body", "upstream_status", "falls_back", "http_status"),
    [
        (400, "ValidationException", "error_validation.json", 400, False, 400),
        (429, "ThrottlingException", "error_throttling.json", 429, True, 502),
        (429, "ModelNotReadyException", "error_throttling.json", 429, True, 502),
        (403, "AccessDeniedException", "error_access_denied.json", 403, True, 502),
        (404, "ResourceNotFoundException", "error_validation.json", 404, True, 502),
        (424, "ModelErrorException", "error_validation.json", 502, True, 502),  # the model failed, not the request
        (500, "InternalServerException", "error_throttling.json", 500, True, 502),
        (503, "ServiceUnavailableException", "error_throttling.json", 503, True, 502),
    ],
)
def test_decode_error(
    status: int, kind: str, body: str, upstream_status: int, falls_back: bool, http_status: int
) -> None:
    err = BedrockAdapter().decode_error(status, fixture(body), {"x-amzn-errortype": kind + NS})
    assert (err.upstream_status, err.falls_back, err.http_status) == (upstream_status, falls_back, http_status)
    message = orjson.loads(fixture(body))
    assert err.message == f"Bedrock {kind}: {message.get('message', message.get('Message'))}"


def test_validation_error_reads_as_an_invalid_request() -> None:
    err = BedrockAdapter().decode_error(
        400, fixture("error_validation.json"), {"x-amzn-errortype": "ValidationException" + NS}
    )
    assert err.error_type == "invalid_request_error"
    assert "toolConfig field must be defined" in err.message


def test_model_timeout_is_a_timeout() -> None:
    err = BedrockAdapter().decode_error(
        408, fixture("error_model_timeout.json"), {"X-Amzn-ErrorType": "ModelTimeoutException" + NS}
    )
    assert isinstance(err, UpstreamTimeout)
    assert err.http_status == 504 and err.falls_back


def test_error_type_from_the_body_and_retry_after() -> None:
    body = b'{"__type": "com.amazon.coral.service#UnrecognizedClientException", "message": "The security token included in the request is invalid."}'  # noqa: E501
    err = BedrockAdapter().decode_error(403, body, {"retry-after": "3"})
    assert err.message == "Bedrock UnrecognizedClientException: The security token included in the request is invalid."
    assert (err.upstream_status, err.retry_after) == (403, 3.0)


def test_error_without_type_or_json() -> None:
    err = BedrockAdapter().decode_error(502, b"<html>Bad Gateway</html>\n", {})
    assert err.message == "Bedrock returned HTTP 502: <html>Bad Gateway</html>"
    assert BedrockAdapter().decode_error(503, b"", {}).message == "Bedrock returned HTTP 503"


# ---- embeddings --------------------------------------------------------------------------------------------------


def embed_input(**fields: Any) -> EmbeddingsInput:
    raw = {"model": "titan", "input": "Why is the sky blue?", **fields}
    return EmbeddingsInput(EmbeddingRequest(**raw), raw)


TITAN = "amazon.titan-embed-text-v2:0"


@pytest.mark.parametrize("inp", ["Why is the sky blue?", ["Why is the sky blue?"]])
def test_encode_titan(inp: str | list[str]) -> None:
    up = BedrockAdapter().encode_embeddings(
        embed_input(input=inp, dimensions=256, encoding_format="base64"), model=TITAN
    )
    assert up.path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert up.headers == {"content-type": "application/json", "accept": "application/json"}
    assert orjson.loads(up.body) == {"inputText": "Why is the sky blue?", "dimensions": 256}


def test_titan_takes_one_text_per_request() -> None:
    with pytest.raises(InvalidRequest) as ei:
        BedrockAdapter().encode_embeddings(embed_input(input=["a", "b"]), model=TITAN)
    assert ei.value.param == "input"
    assert "one text per request" in ei.value.message


@pytest.mark.parametrize("inp", [[1, 2, 3], [[1, 2], [3]]])
def test_token_id_inputs_are_rejected(inp: Any) -> None:
    with pytest.raises(InvalidRequest) as ei:
        BedrockAdapter().encode_embeddings(embed_input(input=inp), model=TITAN)
    assert ei.value.param == "input"


def test_titan_batch_fans_out_and_joins() -> None:
    adapter = BedrockAdapter()
    requests = adapter.encode_embeddings_batch(embed_input(input=["a", "b c", "d"]), model=TITAN)
    assert [orjson.loads(r.body) for r in requests] == [{"inputText": "a"}, {"inputText": "b c"}, {"inputText": "d"}]
    answers = [orjson.dumps({"embedding": [float(i), 0.5], "inputTextTokenCount": i + 1}) for i in range(3)]
    result = adapter.decode_embeddings_batch(answers, model=TITAN, encoding_format="float")
    body = orjson.loads(result.body)
    openapi.validate("CreateEmbeddingResponse", body)
    assert [(d["index"], d["embedding"]) for d in body["data"]] == [(0, [0.0, 0.5]), (1, [1.0, 0.5]), (2, [2.0, 0.5])]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert result.usage == Usage(prompt_tokens=6)


def test_decode_titan_float() -> None:
    result = BedrockAdapter().decode_embeddings(fixture("titan_v2.json"), model=TITAN, encoding_format="float")
    body = orjson.loads(result.body)
    openapi.validate("CreateEmbeddingResponse", body)
    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0625, -0.25, 0.5, 0.125]}],
        "model": TITAN,
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    assert (result.usage, result.response_model) == (Usage(prompt_tokens=6), TITAN)
    v1 = BedrockAdapter().decode_embeddings(
        fixture("titan_v1.json"), model="amazon.titan-embed-text-v1", encoding_format="float"
    )
    assert orjson.loads(v1.body)["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_decode_titan_base64_is_little_endian_float32() -> None:
    result = BedrockAdapter().decode_embeddings(fixture("titan_v2.json"), model=TITAN, encoding_format="base64")
    body = orjson.loads(result.body)
    openapi.validate("CreateEmbeddingResponse", body, base64_embeddings=True)
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack("<4f", raw)) == [0.0625, -0.25, 0.5, 0.125]
    as_sdk = array.array("f", raw)  # what openai-python does with a base64 embedding
    if sys.byteorder == "big":
        as_sdk.byteswap()
    assert as_sdk.tolist() == [0.0625, -0.25, 0.5, 0.125]


def test_cohere_embeds_a_list_in_one_request() -> None:
    adapter = BedrockAdapter()
    up = adapter.encode_embeddings(embed_input(input=["hello", "world"]), model="cohere.embed-english-v3")
    assert up.path == "/model/cohere.embed-english-v3/invoke"
    assert orjson.loads(up.body) == {"texts": ["hello", "world"], "input_type": "search_document"}
    result = adapter.decode_embeddings(
        fixture("cohere_embed.json"), model="cohere.embed-english-v3", encoding_format="float"
    )
    body = orjson.loads(result.body)
    openapi.validate("CreateEmbeddingResponse", body)
    assert [d["embedding"] for d in body["data"]] == [[0.5, -0.5], [0.25, 0.75]]
    assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}  # Bedrock reports Cohere's count in a header only


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"embedding": "x"}', b'{"embedding": ["a"]}', b"{}"])
def test_decode_embeddings_rejects_bad_bodies(raw: bytes) -> None:
    with pytest.raises(UpstreamError):
        BedrockAdapter().decode_embeddings(raw, model=TITAN, encoding_format="base64")

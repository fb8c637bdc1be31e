"""aigw.providers.output and aigw.providers.convert: the OpenAI output the translators share, checked directly
(and against the OpenAI schema subset in tests/data)."""

from __future__ import annotations

import array
import base64
from typing import Any

import orjson
import pytest

from aigw.errors import InvalidRequest, UpstreamError
from aigw.providers import convert
from aigw.providers.base import StreamIdentity
from aigw.providers.output import ChunkWriter, completion
from aigw.schema import chat as oa
from aigw.schema.usage import Usage
from tests.support import openapi

IDENT = StreamIdentity(id="chatcmpl-abc123", created=1_700_000_000)


def _chunks(raw: list[bytes]) -> list[dict[str, Any]]:
    out = [orjson.loads(c) for c in raw]
    for c in out:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    return out


def _stream(writer: ChunkWriter) -> list[bytes]:
    call = oa.ToolCallDelta(
        index=0, id="call_1", type="function", function=oa.ToolCallFunctionDelta(name="f", arguments="{}")
    )
    return [
        writer.chunk(oa.Delta(content="Hel")),
        writer.chunk(oa.Delta(content="lo")),
        writer.chunk(oa.Delta(tool_calls=[call])),
        writer.chunk(oa.Delta(), "tool_calls"),
        *writer.usage_tail(Usage(prompt_tokens=3, completion_tokens=2)),
    ]


def test_role_rides_on_the_first_chunk_only() -> None:
    writer = ChunkWriter(IDENT, "m", include_usage=False)
    assert not writer.started
    chunks = _chunks(_stream(writer))
    assert writer.started
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert writer.finish_reason == "tool_calls"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_ids_and_model_are_stable_and_the_response_model_takes_over() -> None:
    writer = ChunkWriter(IDENT, "asked-for", include_usage=False)
    first = orjson.loads(writer.chunk(oa.Delta(content="a")))
    writer.response_model = "named-by-upstream"
    rest = _chunks([writer.chunk(oa.Delta(content="b")), writer.chunk(oa.Delta(), "stop")])
    assert first["model"] == "asked-for"
    assert {c["model"] for c in rest} == {"named-by-upstream"}
    assert {(c["id"], c["created"], c["object"]) for c in [first, *rest]} == {
        (IDENT.id, IDENT.created, "chat.completion.chunk")
    }


def test_usage_field_follows_include_usage() -> None:
    with_usage = _chunks(_stream(ChunkWriter(IDENT, "m", include_usage=True)))
    assert all("usage" in c and c["usage"] is None for c in with_usage[:-1])  # OpenAI: null on every chunk
    last = with_usage[-1]
    assert last["choices"] == []
    assert last["usage"] == orjson.loads(oa.encode(Usage(prompt_tokens=3, completion_tokens=2).to_openai()))
    assert last["usage"]["total_tokens"] == 5

    without = _chunks(_stream(ChunkWriter(IDENT, "m", include_usage=False)))
    assert len(without) == len(with_usage) - 1  # no usage chunk
    assert all("usage" not in c for c in without)


def test_usage_chunk_shape() -> None:
    chunk = _chunks([ChunkWriter(IDENT, "m", include_usage=True).usage_chunk(Usage(prompt_tokens=1))])[0]
    assert chunk["choices"] == [] and chunk["usage"]["prompt_tokens"] == 1


@pytest.mark.parametrize(("text", "content"), [("", None), ("hi", "hi")])
def test_completion_with_tool_calls(text: str, content: str | None) -> None:
    call = oa.ResponseToolCall(id="call_1", function=oa.FunctionCall(name="f", arguments='{"a":1}'))
    usage = Usage(prompt_tokens=4, completion_tokens=6)
    out = completion(IDENT, "m", text=text, tool_calls=[call], finish="tool_calls", usage=usage)
    body = orjson.loads(out.body)
    openapi.validate("CreateChatCompletionResponse", body)
    assert (out.usage, out.response_model, out.finish_reason) == (usage, "m", "tool_calls")
    assert (body["id"], body["created"]) == (IDENT.id, IDENT.created)
    message = body["choices"][0]["message"]
    assert message["content"] == content
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert body["usage"]["total_tokens"] == 10


def test_completion_without_tool_calls_has_text_content() -> None:
    out = completion(IDENT, "m", text="", tool_calls=[], finish="stop", usage=Usage())
    message = orjson.loads(out.body)["choices"][0]["message"]
    assert message["content"] == "" and "tool_calls" not in message


def test_data_uri() -> None:
    assert convert.data_uri("data:Image/PNG;base64,AAAA") == ("image/png", "AAAA")
    assert convert.data_uri("data:image/png;name=x;base64,") == ("image/png;name=x", "")
    assert convert.data_uri("data:image/png,AAAA") is None
    assert convert.data_uri("https://example.com/a.png") is None


def test_arguments() -> None:
    def call(arguments: str) -> oa.ToolCall:
        return oa.ToolCall(id="call_1", function=oa.FunctionCall(name="f", arguments=arguments))

    assert convert.arguments_object(call('{"a": 1}')) == {"a": 1}
    assert convert.arguments_object(call("  ")) == {}
    for bad in ("[1]", "{", "null"):
        with pytest.raises(InvalidRequest, match="must be a JSON object string"):
            convert.arguments_object(call(bad))
    assert convert.arguments_json(None) == "{}"
    assert convert.arguments_json({"a": [1]}) == '{"a":[1]}'


def test_base64_embedding_is_little_endian_float32() -> None:
    item = convert.embedding(2, [0.5, -1.0], "base64", provider="X")
    assert item.index == 2 and isinstance(item.embedding, str)
    assert list(array.array("f", base64.b64decode(item.embedding))) == [0.5, -1.0]
    assert convert.embedding(0, [0.5], "float", provider="X").embedding == [0.5]
    with pytest.raises(UpstreamError, match="X sent a non-numeric embedding"):
        convert.embedding(0, ["a"], "base64", provider="X")  # type: ignore[list-item]

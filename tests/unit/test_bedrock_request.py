"""BedrockAdapter.encode_chat: OpenAI Chat Completions requests → Converse bodies (no HTTP). Every body produced is
checked against the Bedrock Runtime API model (botocore's ParamValidator) and the fake's service rules
(tests.fakes.bedrock_fake.validate_converse), so a body Bedrock would refuse fails here."""

from __future__ import annotations

from typing import Any

import botocore.session
import msgspec
import orjson
import pytest
from botocore.validate import ParamValidator

from aigw.errors import InvalidRequest
from aigw.providers.base import ChatInput
from aigw.providers.bedrock import BedrockAdapter, default_endpoint
from aigw.providers.bedrock.request import NO_TOOLS_PLACEHOLDER, tool_use_id
from aigw.schema.chat import ChatCompletionRequest
from tests.fakes.bedrock_fake import validate_converse

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
_CONVERSE_INPUT = botocore.session.get_session().get_service_model("bedrock-runtime").operation_model("Converse")


def chat(**fields: Any) -> ChatInput:
    raw = {"model": "my-claude", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatInput(msgspec.convert(raw, ChatCompletionRequest), raw)


def assert_valid_converse(body: dict[str, Any]) -> None:
    """What Bedrock would accept: the API model's types/required members, and the service's own rules."""
    report = ParamValidator().validate({"modelId": CLAUDE, **body}, _CONVERSE_INPUT.input_shape)
    assert not report.has_errors(), report.generate_report()
    validate_converse(body)


def encode(adapter: BedrockAdapter | None = None, *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    up = (adapter or BedrockAdapter()).encode_chat(chat(**fields), model=CLAUDE, stream=stream)
    assert (
        up.path == f"/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/{'converse-stream' if stream else 'converse'}"
    )
    assert (up.method, up.headers) == ("POST", {"content-type": "application/json"})
    body: dict[str, Any] = orjson.loads(up.body)
    assert_valid_converse(body)
    return body


def test_the_checks_can_fail() -> None:
    with pytest.raises(AssertionError):
        assert_valid_converse({"messages": [{"role": "user", "content": [{"txt": "hi"}]}]})


# ---- request: paths, messages ----------------------------------------------------------------------------------


def test_minimal_request() -> None:
    assert encode() == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert encode(stream=True) == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("amazon.nova-lite-v1:0", "/model/amazon.nova-lite-v1%3A0/converse"),
        ("meta.llama3-70b-instruct-v1", "/model/meta.llama3-70b-instruct-v1/converse"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse",
        ),
    ],
)
def test_model_id_is_percent_encoded_into_the_path(model: str, path: str) -> None:
    # As boto3 sends it: every reserved character of the id (':' and an ARN's '/') percent-encoded.
    assert BedrockAdapter().encode_chat(chat(), model=model, stream=False).path == path


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("us-east-1", "https://bedrock-runtime.us-east-1.amazonaws.com"),
        ("eu-central-1", "https://bedrock-runtime.eu-central-1.amazonaws.com"),
        ("cn-north-1", "https://bedrock-runtime.cn-north-1.amazonaws.com.cn"),
    ],
)
def test_default_endpoint(region: str, url: str) -> None:
    assert default_endpoint(region) == url


def test_system_and_developer_messages_are_hoisted_in_order() -> None:
    body = encode(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "why is the sky blue?"},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Answer"}, {"type": "text", "text": "in English."}],
            },
            {"role": "assistant", "content": "Rayleigh scattering."},
            {"role": "user", "content": [{"type": "text", "text": "and sunsets?"}]},
        ]
    )
    assert body["system"] == [{"text": "Be brief."}, {"text": "Answer"}, {"text": "in English."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "why is the sky blue?"}]},
        {"role": "assistant", "content": [{"text": "Rayleigh scattering."}]},
        {"role": "user", "content": [{"text": "and sunsets?"}]},
    ]


def test_consecutive_same_role_turns_are_merged_and_empty_text_dropped() -> None:
    body = encode(
        messages=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": ""}]},
            {"role": "system", "content": ""},
            {"role": "assistant", "content": ""},  # nothing Bedrock accepts: dropped, so the users merge
            {"role": "user", "content": "third"},
        ]
    )
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "first"}, {"text": "second"}, {"text": "third"}]}]
    }


@pytest.mark.parametrize(
    ("media", "fmt"), [("png", "png"), ("jpeg", "jpeg"), ("jpg", "jpeg"), ("gif", "gif"), ("webp", "webp")]
)
def test_data_uri_images(media: str, fmt: str) -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/{media};base64,{PNG}", "detail": "high"}},
    ]
    body = encode(messages=[{"role": "user", "content": content}])
    assert body["messages"][0]["content"] == [
        {"text": "what is this?"},
        {"image": {"format": fmt, "source": {"bytes": PNG}}},
    ]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("https://example.com/cat.png", "an http(s) URL"),
        ("http://example.com/cat.png", "an http(s) URL"),
        (f"data:image/png,{PNG}", "data:image/...;base64"),
        (f"data:image/bmp;base64,{PNG}", "not image/bmp"),
        ("data:image/png;base64,", "data:image/...;base64"),
    ],
)
def test_images_bedrock_cannot_take_are_rejected(url: str, needle: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert ei.value.param == "messages"
    assert needle in ei.value.message


def test_audio_and_file_parts_are_rejected() -> None:
    for part in (
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {}},
    ):
        with pytest.raises(InvalidRequest, match="does not translate"):
            encode(messages=[{"role": "user", "content": [part]}])


# ---- request: tools --------------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": ""}}
TOOL_HISTORY = [
    {"role": "user", "content": "weather and time in Toronto?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_w",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Toronto"}'},
            },
            {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_t", "content": "14:05"},
    {"role": "tool", "tool_call_id": "call_w", "content": [{"type": "text", "text": "11 degrees celsius"}]},
]


def test_tools_tool_calls_and_tool_results() -> None:
    body = encode(tools=[WEATHER, TIME], messages=[*TOOL_HISTORY, {"role": "user", "content": "thanks, and tomorrow?"}])
    assert body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Get the weather in a given city",
                    "inputSchema": {
                        "json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
                    },
                }
            },
            # No parameters → an empty object schema; an empty description is left out (NonEmptyString).
            {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
        ]
    }
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "call_w", "name": "get_weather", "input": {"city": "Toronto"}}},
                {"toolUse": {"toolUseId": "call_t", "name": "get_time", "input": {}}},
            ],
        },
        {
            # The tool results become one user turn, followed by the user's next message.
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "call_t", "content": [{"text": "14:05"}]}},
                {"toolResult": {"toolUseId": "call_w", "content": [{"text": "11 degrees celsius"}]}},
                {"text": "thanks, and tomorrow?"},
            ],
        },
    ]


def test_tool_call_ids_bedrock_would_reject_are_mapped_consistently() -> None:
    odd = "call/ü-" + "x" * 70
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": odd, "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": odd, "content": "now"},
    ]
    body = encode(tools=[TIME], messages=history)
    used = body["messages"][1]["content"][0]["toolUse"]["toolUseId"]
    assert used == tool_use_id(odd) == body["messages"][2]["content"][0]["toolResult"]["toolUseId"]
    assert used != odd and len(used) <= 64
    assert tool_use_id("toolu_01A09q90qw90lq917835lq9") == "toolu_01A09q90qw90lq917835lq9"


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"city"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequest) as ei:
        encode(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}])
    assert ei.value.param == "messages"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", None),  # Converse's default; not every model accepts an explicit toolChoice
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER, TIME]}
    if choice is not None:
        fields["tool_choice"] = choice
    config = encode(**fields)["toolConfig"]
    assert [t["toolSpec"]["name"] for t in config["tools"]] == ["get_weather", "get_time"]
    assert config.get("toolChoice") == expected


def test_named_tool_choice_must_name_a_tool() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert ei.value.param == "tool_choice"


def test_tool_choice_none_without_tool_history_omits_tool_config() -> None:
    assert "toolConfig" not in encode(tools=[WEATHER], tool_choice="none")


@pytest.mark.parametrize("fields", [{}, {"tools": [WEATHER], "tool_choice": "none"}])
def test_tool_history_without_usable_tools_gets_the_placeholder(fields: dict[str, Any]) -> None:
    # Bedrock: "The toolConfig field must be defined when using toolUse and toolResult content blocks".
    body = encode(messages=TOOL_HISTORY, **fields)
    (tool,) = body["toolConfig"]["tools"]
    assert tool["toolSpec"]["name"] == NO_TOOLS_PLACEHOLDER
    assert "never call this tool" in tool["toolSpec"]["description"]
    assert "toolChoice" not in body["toolConfig"]


def test_non_function_tools_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(tools=[{"type": "custom", "function": {"name": "x"}}])
    assert ei.value.param == "tools"


def test_deprecated_function_call_round_trip() -> None:
    body = encode(
        tools=[TIME],
        messages=[
            {"role": "user", "content": "time?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": "{}"}},
            {"role": "function", "name": "get_time", "content": "14:05"},
        ],
    )
    assert body["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "call_get_time", "name": "get_time", "input": {}}}
    ]
    assert body["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "call_get_time", "content": [{"text": "14:05"}]}}
    ]


# ---- request: inference parameters -----------------------------------------------------------------------------


def test_inference_config() -> None:
    body = encode(max_tokens=100, max_completion_tokens=50, temperature=0.2, top_p=0.9, stop="\n")
    assert body["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["\n"]}
    assert encode(max_tokens=100)["inferenceConfig"] == {"maxTokens": 100}
    assert encode(temperature=0)["inferenceConfig"] == {"temperature": 0}  # 0 is a value, not "unset"
    assert encode(stop=["user:", "", "\n\n"])["inferenceConfig"] == {"stopSequences": ["user:", "\n\n"]}
    assert "inferenceConfig" not in encode(stop=[""])


def test_temperature_above_bedrocks_range_is_clamped() -> None:
    assert encode(temperature=1.7)["inferenceConfig"] == {"temperature": 1.0}
    assert encode(temperature=1.0)["inferenceConfig"] == {"temperature": 1.0}


def test_default_max_tokens() -> None:
    adapter = BedrockAdapter(default_max_tokens=4096)
    assert encode(adapter)["inferenceConfig"] == {"maxTokens": 4096}
    assert encode(adapter, max_completion_tokens=7)["inferenceConfig"] == {"maxTokens": 7}


def test_n_above_one_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as ei:
        encode(n=2)
    assert ei.value.param == "n"
    assert encode(n=1)["messages"]


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


def test_response_format() -> None:
    body = encode(response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
    assert body["outputConfig"] == {
        "textFormat": {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": orjson.dumps(SCHEMA).decode(), "name": "person"}},
        }
    }
    assert "outputConfig" not in encode(response_format={"type": "text"})
    for bad in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "yaml"}):
        with pytest.raises(InvalidRequest) as ei:
            encode(response_format=bad)
        assert ei.value.param == "response_format"


def test_openai_only_fields_are_not_sent() -> None:
    body = encode(user="u-1", logprobs=True, top_logprobs=2, parallel_tool_calls=False, seed=7, presence_penalty=1)
    assert set(body) == {"messages"}

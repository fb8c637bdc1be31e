"""OpenAI Chat Completions request → Bedrock Converse request body (``/model/{modelId}/converse[-stream]``).

Rules of the Converse API this translation follows (API reference and the ValidationException texts it returns):

* ``system`` is a list of ``{"text"}`` blocks; OpenAI system and developer messages are hoisted there, in order,
  wherever they appear in the conversation.
* ``messages`` alternate ``user`` / ``assistant`` ("A conversation must alternate between user and assistant
  roles"): consecutive same-role turns are merged into one, their content blocks concatenated in order.
* Tool results are ``toolResult`` blocks inside a **user** turn; assistant ``tool_calls`` are ``toolUse`` blocks
  whose ``input`` is a JSON object (OpenAI sends a string).
* Text blocks must not be blank ("The text field in the ContentBlock object ... is blank"): empty text is dropped.
* Images are ``{"image": {"format": png|jpeg|gif|webp, "source": {"bytes": <base64>}}}``; Bedrock cannot fetch a
  URL, so only ``data:`` URIs can be forwarded.
* "The toolConfig field must be defined when using toolUse and toolResult content blocks": a request whose history
  holds tool blocks but that offers no tools (or says ``tool_choice: "none"``) gets a placeholder tool the model
  is told never to call (:data:`NO_TOOLS_PLACEHOLDER`) -- Converse's ``toolChoice`` has no "none" member. Should
  the model call it anyway, the decoders drop that call, so the client never sees a tool it did not offer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import orjson

from aigw.errors import InvalidRequest
from aigw.providers.convert import arguments_object, data_uri, json_schema
from aigw.schema import chat as oa

Block = dict[str, Any]
Turn = dict[str, Any]

# InferenceConfiguration.temperature is 0..1 (service-2.json); OpenAI allows 0..2. Values above 1 are clamped to
# Bedrock's maximum ("most random") rather than rejected or rescaled: rescaling would change every request's
# meaning, clamping only the ones Bedrock cannot express.
MAX_TEMPERATURE = 1.0
NO_TOOLS_PLACEHOLDER = "aigw_no_tools"
_PLACEHOLDER_SPEC = {
    "toolSpec": {
        "name": NO_TOOLS_PLACEHOLDER,
        "description": "Placeholder required by the API for a conversation that used tools earlier. "
        "No tools are available now: never call this tool.",
        "inputSchema": {"json": {"type": "object", "properties": {}}},
    }
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
# ToolUseId: [a-zA-Z0-9_.:-]+, 1..64 characters.
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")


def tool_use_id(call_id: str) -> str:
    """A Bedrock-legal id for an OpenAI tool-call id: kept when legal, else a stable digest (the same function maps
    the assistant's call and the tool message's ``tool_call_id``, so they still match)."""
    if _TOOL_USE_ID.fullmatch(call_id):
        return call_id
    return "call_" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def _text_blocks(content: str | Sequence[oa.TextPart | oa.RefusalPart] | None) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    texts = (p.text if isinstance(p, oa.TextPart) else p.refusal for p in content)
    return [{"text": t} for t in texts if t]


def _image(url: str) -> Block:
    inline = data_uri(url)
    if inline is not None and inline[1]:
        media, data = inline[0].split(";", 1)[0].strip(), inline[1]
        fmt = _IMAGE_FORMATS.get(media)
        if fmt is None:
            raise InvalidRequest(
                f"Bedrock accepts png, jpeg, gif and webp images, not {media or 'an unlabelled type'}", param="messages"
            )
        # A blob in Converse's JSON protocol is base64 text: the data URI's payload is forwarded as it is.
        return {"image": {"format": fmt, "source": {"bytes": data}}}
    kind = "an http(s) URL" if url.startswith(("http://", "https://")) else "this kind of URI"
    raise InvalidRequest(
        f"Bedrock cannot fetch images: send image_url as a data:image/...;base64 URI, not {kind}", param="messages"
    )


def _user_blocks(content: str | Sequence[oa.ContentPart]) -> list[Block]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[Block] = []
    for part in content:
        if isinstance(part, oa.TextPart):
            if part.text:
                blocks.append({"text": part.text})
        elif isinstance(part, oa.ImagePart):
            blocks.append(_image(part.image_url.url))
        else:
            kind = type(part).__name__.removesuffix("Part").lower()
            raise InvalidRequest(f"the Bedrock provider does not translate {kind} content parts", param="messages")
    return blocks


def _tool_use(call: oa.ToolCall) -> Block:
    args = arguments_object(call)
    return {"toolUse": {"toolUseId": tool_use_id(call.id), "name": call.function.name, "input": args}}


def _tool_result(call_id: str, content: str | Sequence[oa.TextPart] | None) -> Block:
    # OpenAI tool output is text; it stays text (a JSON-looking string is not re-typed as a `json` block).
    # `status` is left out: the API documents it for Anthropic Claude models only.
    blocks = _text_blocks(content)
    return {"toolResult": {"toolUseId": tool_use_id(call_id), "content": blocks}}


def messages(msgs: Sequence[oa.Message]) -> tuple[list[Block], list[Turn], bool]:
    """``(system, messages, has_tool_blocks)`` for a Converse body."""
    system: list[Block] = []
    turns: list[Turn] = []
    tool_blocks = False

    def add(role: str, blocks: list[Block]) -> None:
        if not blocks:
            return  # a turn with nothing Bedrock accepts; its neighbours merge if they share a role
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in msgs:
        if isinstance(m, oa.SystemMessage | oa.DeveloperMessage):
            system.extend(_text_blocks(m.content))
        elif isinstance(m, oa.UserMessage):
            add("user", _user_blocks(m.content))
        elif isinstance(m, oa.AssistantMessage):
            blocks = _text_blocks(m.content)
            if not blocks and m.refusal:
                blocks = [{"text": m.refusal}]
            calls = list(m.tool_calls or ())
            if m.function_call is not None:  # the deprecated single-call form; ids as FunctionMessage derives them
                calls.append(oa.ToolCall(id=f"call_{m.function_call.name}", function=m.function_call))
            blocks += [_tool_use(c) for c in calls]
            tool_blocks = tool_blocks or bool(calls)
            add("assistant", blocks)
        elif isinstance(m, oa.ToolMessage):
            add("user", [_tool_result(m.tool_call_id, m.content)])
            tool_blocks = True
        elif isinstance(m, oa.FunctionMessage):
            add("user", [_tool_result(f"call_{m.name}", m.content)])
            tool_blocks = True
    return system, turns, tool_blocks


def tool_config(req: oa.ChatCompletionRequest, *, history_has_tools: bool) -> dict[str, Any] | None:
    choice = req.tool_choice
    offered = bool(req.tools) and choice != "none"
    if not offered:
        return {"tools": [_PLACEHOLDER_SPEC]} if history_has_tools else None
    specs = []
    for t in req.tools or ():
        if t.type != "function":
            raise InvalidRequest(f"Bedrock supports only function tools, not {t.type!r}", param="tools")
        spec: dict[str, Any] = {
            "name": t.function.name,
            "inputSchema": {"json": t.function.parameters or {"type": "object", "properties": {}}},
        }
        if t.function.description:  # NonEmptyString: an empty description is a ValidationException
            spec["description"] = t.function.description
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    # "auto" is Converse's default and is left implicit: toolChoice is "if supported by model" and not every model
    # accepts it. "required" is Converse's `any`, a named function its `tool` (Claude 3 / Nova only, per the docs).
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, oa.NamedToolChoice):
        if choice.function.name not in {t.function.name for t in req.tools or ()}:
            raise InvalidRequest(
                f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
            )
        config["toolChoice"] = {"tool": {"name": choice.function.name}}
    return config


def inference_config(req: oa.ChatCompletionRequest, default_max_tokens: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    limit = req.output_limit if req.output_limit is not None else default_max_tokens
    if limit is not None:
        config["maxTokens"] = limit
    if req.temperature is not None:
        config["temperature"] = min(req.temperature, MAX_TEMPERATURE)
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else req.stop
        stops = [s for s in stops if s]  # NonEmptyString members
        if stops:
            config["stopSequences"] = stops
    return config


def output_config(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """``response_format`` → Converse ``outputConfig.textFormat`` (structured output; the schema travels as a JSON
    string). Models without structured-output support answer 400, which reaches the client as such."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = json_schema(response_format)
        if schema is None:
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object", param="response_format"
            )
        definition: dict[str, Any] = {"schema": orjson.dumps(schema).decode()}
        for key in ("name", "description"):
            value = spec.get(key) if isinstance(spec, dict) else None
            if isinstance(value, str) and value:
                definition[key] = value
        return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}
    if kind == "json_object":
        # Converse has no schema-less JSON mode; silently answering free text would break the client's parser.
        raise InvalidRequest(
            "Bedrock has no JSON mode without a schema: use response_format type json_schema", param="response_format"
        )
    raise InvalidRequest(f"unsupported response_format type {kind!r}", param="response_format")


def converse_body(req: oa.ChatCompletionRequest, *, default_max_tokens: int | None) -> dict[str, Any]:
    if req.n is not None and req.n > 1:
        raise InvalidRequest("Bedrock generates one choice per request; n must be 1", param="n")
    system, turns, history_tools = messages(req.messages)
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = system
    inference = inference_config(req, default_max_tokens)
    if inference:
        body["inferenceConfig"] = inference
    tools = tool_config(req, history_has_tools=history_tools)
    if tools is not None:
        body["toolConfig"] = tools
    output = output_config(req.response_format)
    if output is not None:
        body["outputConfig"] = output
    # Not translated, for want of a Converse equivalent: seed, presence/frequency_penalty, logprobs and user.
    # parallel_tool_calls has no model-independent switch either: `false` is enforced on the answer instead (the
    # decoders keep only its first tool call; see BedrockAdapter.decode_chat and BedrockStreamDecoder).
    return body

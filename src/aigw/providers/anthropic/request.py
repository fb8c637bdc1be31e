"""OpenAI chat request → Anthropic Messages request body (``POST /v1/messages``).

Rules relied on (docs "Messages", "Tool use: handle tool calls", "Vision", "Structured outputs"; SDK
``types/message_create_params.py`` and the ``*_param.py`` block types):

* ``system`` is a top-level parameter; a ``system`` role inside ``messages`` is a 400.
* turns alternate ``user``/``assistant``; tool results are ``tool_result`` blocks in the **user** turn right after
  the assistant turn holding the ``tool_use`` blocks, and "tool_result blocks must come FIRST in the content
  array" of that turn;
* ``tool_use.id`` must match ``^[a-zA-Z0-9_-]+$`` and ``input`` must be an object;
* images are ``{"type": "image", "source": {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}``
  with media types jpeg, png, gif and webp only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aigw.errors import InvalidRequest
from aigw.providers.convert import arguments_object, data_uri, json_schema
from aigw.schema import chat as oa  # the OpenAI side of every translation

Block = dict[str, Any]

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_TOOL_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
# anthropic-version 2026-10-21 removed the sampling parameters: "temperature: Extra inputs are not permitted",
# even at their defaults. Versions are ISO dates, so they compare as strings.
_NO_SAMPLING_SINCE = "2026-10-21"


# ---- small pieces ----------------------------------------------------------------------------------------


def _bad(message: str, param: str = "messages") -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _cache_control(raw: object) -> Any:
    """A client's ``cache_control`` marker (an extension some OpenAI clients send for Anthropic prompt caching,
    on a content part or a whole message); forwarded as given so cached-token pricing is reachable."""
    cc = raw.get("cache_control") if isinstance(raw, Mapping) else None
    return cc if isinstance(cc, Mapping) else None


def _mark(blocks: list[Block], cc: Any) -> list[Block]:
    if cc is not None and blocks:
        blocks[-1]["cache_control"] = dict(cc)
    return blocks


def tool_id(raw: str) -> str:
    """An id Anthropic accepts. Ids from other providers may hold ``.``, ``:`` or ``|``; both the ``tool_use`` and
    its ``tool_result`` pass through here, so the pair still matches. The hash suffix keeps two ids that differ
    only in replaced characters apart."""
    if _TOOL_ID.match(raw):
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{_TOOL_ID_BAD.sub('_', raw)}_{digest}"


def _text_blocks(content: str | Sequence[oa.TextPart | oa.RefusalPart] | None, raw: object) -> list[Block]:
    # Empty text blocks are dropped: the API rejects them ("text content blocks must be non-empty").
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    parts = raw.get("content") if isinstance(raw, Mapping) else None
    out = []
    for i, p in enumerate(content):
        text = p.text if isinstance(p, oa.TextPart) else p.refusal
        if text:
            block: Block = {"type": "text", "text": text}
            _mark([block], _cache_control(parts[i]) if isinstance(parts, list) and i < len(parts) else None)
            out.append(block)
    return out


def _image(url: str) -> Block:
    inline = data_uri(url)
    if inline is not None:
        media_type, data = inline
        media_type = "image/jpeg" if media_type == "image/jpg" else media_type  # a common client spelling
        if media_type not in _IMAGE_TYPES:
            raise _bad(f"Anthropic accepts jpeg, png, gif and webp images, not {media_type or 'untyped data'}")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}  # Anthropic fetches it
    raise _bad("image_url must be a data:image/...;base64 URI or an http(s) URL")


def _document(file: Mapping[str, Any]) -> Block:
    # OpenAI's `file` part with inline PDF bytes ↔ Anthropic's base64 `document` block. File ids name OpenAI's
    # own file store, which Anthropic cannot read.
    inline = data_uri(str(file.get("file_data") or ""))
    if inline is None or inline[0] != "application/pdf":
        raise _bad("Anthropic takes files only as inline PDFs: file.file_data = data:application/pdf;base64,...")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": inline[1]}}


def _user_blocks(m: oa.UserMessage, raw: object) -> list[Block]:
    if isinstance(m.content, str):
        return _text_blocks(m.content, raw)
    parts = raw.get("content") if isinstance(raw, Mapping) else None
    out: list[Block] = []
    for i, p in enumerate(m.content):
        block: Block | None
        if isinstance(p, oa.TextPart):
            block = {"type": "text", "text": p.text} if p.text else None
        elif isinstance(p, oa.ImagePart):
            block = _image(p.image_url.url)
        elif isinstance(p, oa.FilePart):
            block = _document(p.file)
        else:
            raise _bad(f"Anthropic does not accept {type(p).__name__} content")
        if block is not None:
            out.extend(_mark([block], _cache_control(parts[i]) if isinstance(parts, list) and i < len(parts) else None))
    return out


def _tool_use(tc: oa.ToolCall) -> Block:
    return {"type": "tool_use", "id": tool_id(tc.id), "name": tc.function.name, "input": arguments_object(tc)}


def _tool_result(call_id: str, content: str | Sequence[oa.TextPart] | None, raw: object) -> Block:
    block: Block = {"type": "tool_result", "tool_use_id": tool_id(call_id)}
    if isinstance(content, str) or content is None:
        block["content"] = content or ""
    else:
        block["content"] = _text_blocks(content, raw)
    return block


def _function_call_id(name: str) -> str:
    # The deprecated `function_call` / role "function" pair carries no id: derive the same one on both sides.
    return tool_id(f"call_{name}")


# ---- messages ----------------------------------------------------------------------------------------------


def translate_messages(
    messages: Sequence[oa.Message], raw_messages: object
) -> tuple[list[Block], list[dict[str, Any]]]:
    """(system text blocks, alternating user/assistant turns)."""
    raws = raw_messages if isinstance(raw_messages, list) else []
    system: list[Block] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[Block]) -> None:
        if not blocks:
            return  # an empty message adds nothing (and an empty turn would be a 400)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # merge: the API wants strict alternation
        else:
            turns.append({"role": role, "content": blocks})

    for i, m in enumerate(messages):
        raw = raws[i] if i < len(raws) else None
        cc = _cache_control(raw)
        if isinstance(m, oa.SystemMessage | oa.DeveloperMessage):
            # Hoisted in order, wherever they stood: Messages has no mid-conversation system turn.
            system.extend(_mark(_text_blocks(m.content, raw), cc))
        elif isinstance(m, oa.UserMessage):
            add("user", _mark(_user_blocks(m, raw), cc))
        elif isinstance(m, oa.AssistantMessage):
            blocks = _text_blocks(m.content, raw)
            if m.refusal and not blocks:
                blocks.append({"type": "text", "text": m.refusal})
            blocks.extend(_tool_use(tc) for tc in m.tool_calls or ())
            if m.function_call is not None:
                call = oa.ToolCall(id=_function_call_id(m.function_call.name), function=m.function_call)
                blocks.append(_tool_use(call))
            add("assistant", _mark(blocks, cc))
        elif isinstance(m, oa.ToolMessage):
            add("user", _mark([_tool_result(m.tool_call_id, m.content, raw)], cc))
        elif isinstance(m, oa.FunctionMessage):
            add("user", _mark([_tool_result(_function_call_id(m.name), m.content, raw)], cc))
    for turn in turns:
        if turn["role"] == "user":
            # Tool results first, whatever order the client interleaved them with user text (stable sort).
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    if not turns:
        raise _bad("Anthropic needs at least one user or assistant message with content")
    return system, turns


# ---- tools and parameters ----------------------------------------------------------------------------------


def translate_tools(tools: Sequence[oa.Tool]) -> list[Block]:
    out = []
    for t in tools:
        if t.type != "function":
            raise _bad(f"Anthropic supports only function tools, not {t.type!r}", "tools")
        schema = dict(t.function.parameters or {})
        schema.setdefault("type", "object")  # input_schema is required and must be an object schema
        tool: Block = {"name": t.function.name}
        if t.function.description:
            tool["description"] = t.function.description
        tool["input_schema"] = schema
        if t.function.strict:
            # Anthropic's strict tool use is the same guarantee as OpenAI's; a model without it answers 400
            # rather than silently dropping the guarantee.
            tool["strict"] = True
        out.append(tool)
    return out


def translate_tool_choice(req: oa.ChatCompletionRequest) -> Block | None:
    if not req.tools:
        return None  # a tool_choice without tools means nothing
    choice = req.tool_choice
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, oa.NamedToolChoice):
        tc: Block = {"type": "tool", "name": choice.function.name}
    elif choice == "required":
        tc = {"type": "any"}
    elif choice == "auto" or req.parallel_tool_calls is False:
        tc = {"type": "auto"}
    else:
        return None  # Anthropic's default is auto as well
    if req.parallel_tool_calls is False:
        tc["disable_parallel_tool_use"] = True
    return tc


def translate_response_format(rf: Mapping[str, Any]) -> Block | None:
    """``output_config`` for a response_format. ``json_schema`` maps onto structured outputs
    (``output_config.format``, GA without a beta header); ``json_object`` has no Messages equivalent, and a
    prompt-only imitation would fail silently, so it is a clear 400 instead."""
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = json_schema(rf)
        if schema is None:
            raise _bad("response_format json_schema needs json_schema.schema for Anthropic", "response_format")
        return {"format": {"type": "json_schema", "schema": schema}}
    if kind == "json_object":
        raise _bad(
            "Anthropic has no JSON-object mode: send response_format type json_schema with a schema instead",
            "response_format",
        )
    raise _bad(f"unsupported response_format type {kind!r}", "response_format")


def sampling(req: oa.ChatCompletionRequest, anthropic_version: str) -> dict[str, Any]:
    if anthropic_version >= _NO_SAMPLING_SINCE:
        # The version rejects temperature/top_p/top_k outright (400), so they are left out: the answer is then
        # sampled at the model's defaults. Pin anthropic_version 2023-06-01 to keep them.
        return {}
    out: dict[str, Any] = {}
    if req.temperature is not None:
        # OpenAI's range is 0-2, Anthropic's 0-1 (values above are a 400). Clamp rather than rescale: a client's
        # 0.2 means the same fairly deterministic sampling on both, and anything above 1 is "as random as it gets".
        out["temperature"] = min(req.temperature, 1.0)
    if req.top_p is not None:
        out["top_p"] = req.top_p
    return out

"""``FakeAnthropic``: Anthropic's Messages API (``POST /v1/messages``) as a real local HTTP server.

Wire shapes follow the docs ("Messages", "Streaming Messages", "Errors", "Tool use", "Prompt caching") and the
official SDK's types. Streams go, as documented: ``message_start`` (``output_tokens: 1``), per block
``content_block_start`` / ``content_block_delta``… / ``content_block_stop`` (a ``ping`` after the first start; text
one word per delta; tool input as ``input_json_delta`` fragments, the first one ``""``), ``message_delta`` (stop
reason, cumulative usage), ``message_stop`` — each framed ``event: <type>\ndata: <json>\n\n``. Errors are
``{"type": "error", "error": {"type", "message"}, "request_id"}``; ``faults.error_after(n)`` sends n frames
(message_start is frame 0) then an ``event: error`` frame typed by the fault's ``error_type`` (default
``overloaded_error``).

Checked like the real API, so translation bugs fail end to end: the key (``x-api-key``, or ``Authorization: Bearer``
as SDK 2.x sends it; 401), ``anthropic-version`` (400), and the Messages rules (400 ``invalid_request_error`` in the
API's words): unknown top-level fields, missing ``max_tokens``, a ``system`` role in ``messages``, empty content or
text blocks, roles that do not alternate (stricter than today's API, which merges them), off-pattern tool ids and
names, a ``tool_use`` without its ``tool_result`` first in the next turn, a ``tool_result`` without a ``tool_use``
in the previous turn, bad image sources, out-of-range sampling values and, from version 2026-10-21, any
``temperature``/``top_p``/``top_k``.

Replies follow :mod:`tests.fakes.text` like the OpenAI fake (echo of the last user turn, words as tokens, tool-call
planning; a ``tool_use`` input counts as its compact JSON), plus: ``stop_sequences`` → ``stop_sequence`` with the
matched string, ``max_tokens`` cuts, ``disable_parallel_tool_use``, ``tool_choice`` ``any``/``tool`` forcing a call
even after tool results, ``output_config.format`` → matching JSON. Prompt caching: the prompt up to the last
``cache_control`` marker (all of it for a top-level one) is written on first sight and read afterwards (per fake, no
minimum length). Not emulated: thinking, server tools, image tokens, tool calls cut by ``max_tokens``, prefill.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import text
from tests.fakes.base import FakeUpstream
from tests.fakes.faults import Fault

# Current names (the SDK warns about deprecated ones, and pytest turns warnings into errors).
DEFAULT_MODELS = frozenset(
    {"claude-sonnet-4-6", "claude-opus-4-7", "claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-sonnet-5-5"}
)
VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
NO_SAMPLING_SINCE = "2026-10-21"
ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not Found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
TOP_LEVEL = frozenset(
    {"model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "stream", "temperature", "top_p",
     "top_k", "tools", "tool_choice", "thinking", "service_tier", "output_config", "cache_control", "container",
     "inference_geo", "speed", "diagnostics"}
)  # fmt: skip
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_ID_CHARS = string.ascii_letters + string.digits
_stream_error_type: ContextVar[str] = ContextVar("stream_error_type", default="overloaded_error")


def _rand(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


class Invalid(Exception):
    """A request the real API answers with 400 invalid_request_error (the message is the API's wording)."""


# ---- request rules -------------------------------------------------------------------------------------------


def _check_block(block: Any, where: str, role: str) -> None:
    if not isinstance(block, Mapping):
        raise Invalid(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    cc = block.get("cache_control")
    if cc is not None and not (isinstance(cc, Mapping) and cc.get("type") == "ephemeral"):
        raise Invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid("messages: text content blocks must be non-empty")
    elif kind in ("image", "document"):
        src = block.get("source")
        if not isinstance(src, Mapping):
            raise Invalid(f"{where}.source: Field required")
        if src.get("type") == "url" and isinstance(src.get("url"), str):
            return
        allowed = IMAGE_TYPES if kind == "image" else frozenset({"application/pdf"})
        if src.get("type") != "base64" or src.get("media_type") not in allowed:
            raise Invalid(f"{where}.source.media_type: Input should be one of {', '.join(sorted(allowed))}")
        if not isinstance(src.get("data"), str) or not _B64.match(src["data"]):
            raise Invalid(f"{where}.source.base64.data: The {kind} data is not valid base64")
    elif kind == "tool_use":
        if role != "assistant":
            raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
        if not isinstance(block.get("id"), str) or not _TOOL_ID.match(block["id"]):
            raise Invalid(f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("name"), str) or not isinstance(block.get("input"), Mapping):
            raise Invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")
        content = block.get("content", "")
        if isinstance(content, list):
            for j, inner in enumerate(content):
                _check_block(inner, f"{where}.content.{j}", role)
        elif not isinstance(content, str):
            raise Invalid(f"{where}.tool_result.content: Input should be a valid string or list")
    elif kind not in ("thinking", "redacted_thinking") or role != "assistant":
        raise Invalid(f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags")


def _tool_ids(message: Mapping[str, Any], kind: str) -> list[str]:
    content = message.get("content")
    blocks = [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []
    return [str(b.get("id" if kind == "tool_use" else "tool_use_id")) for b in blocks if b.get("type") == kind]


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else None
        if role == "system":
            raise Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        assert isinstance(m, Mapping)
        if i and messages[i - 1]["role"] == role:
            alternate = 'roles must alternate between "user" and "assistant"'
            raise Invalid(f'messages: {alternate}, but found multiple "{role}" roles in a row')
        content = m.get("content")
        if not content and not (role == "assistant" and i == len(messages) - 1):
            rule = "all messages must have non-empty content except for the optional final assistant message"
            raise Invalid(f"messages.{i}: {rule}")
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_block(block, f"messages.{i}.content.{j}", role)
        elif not isinstance(content, str):
            raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
    for i, m in enumerate(messages):
        used = _tool_ids(m, "tool_use")
        answered = _tool_ids(m, "tool_result")
        previous = _tool_ids(messages[i - 1], "tool_use") if i else []
        for j, tid in enumerate(answered):
            if tid not in previous:
                raise Invalid(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {tid}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
        if used and i + 1 < len(messages):
            following = _blocks(messages[i + 1].get("content"))
            firsts = [b.get("tool_use_id") for b in following[: len(used)] if b.get("type") == "tool_result"]
            if len(firsts) < len(used) and len(_tool_ids(messages[i + 1], "tool_result")) > len(firsts):
                raise Invalid(
                    f"messages.{i + 1}: Did not find {len(used)} `tool_result` block(s) at the beginning of this "
                    "message. Messages following `tool_use` blocks must begin with a matching number of "
                    "`tool_result` blocks."
                )
            missing = [u for u in used if u not in firsts]
            if missing:
                raise Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )


def _check_tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    names: list[str] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, Mapping) or tool.get("type", "custom") != "custom":
            continue  # server tools (web_search_…) are accepted unchecked
        for key in tool:
            if key not in ("name", "description", "input_schema", "strict", "cache_control", "type"):
                raise Invalid(f"tools.{i}.custom.{key}: Extra inputs are not permitted")
        if not isinstance(tool.get("name"), str) or not _TOOL_NAME.match(tool["name"]):
            raise Invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    if len(set(names)) != len(names):
        raise Invalid("tools: Tool names must be unique.")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise Invalid("tool_choice may only be specified while providing tools.")
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice: Input tag found using 'type' does not match any of the expected tags")
    if kind == "tool" and choice.get("name") not in names:
        raise Invalid(f"tool_choice: Tool '{choice.get('name')}' not found in provided tools")


def check_request(body: Any, version: str) -> None:
    if not isinstance(body, Mapping):
        raise Invalid("There was an issue with your request body: it is not a JSON object")
    for key in body:
        if key not in TOP_LEVEL or (key in ("temperature", "top_p", "top_k") and version >= NO_SAMPLING_SINCE):
            raise Invalid(f"{key}: Extra inputs are not permitted")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise Invalid(f"{key}: Field required")
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) or body["max_tokens"] < 0:
        raise Invalid("max_tokens: Input should be a valid integer, greater than or equal to 0")
    for key, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(key)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= high):
            raise Invalid(f"{key}: Input should be less than or equal to {high:g}")
    system = body.get("system")
    if isinstance(system, list):
        for j, block in enumerate(system):
            if not (isinstance(block, Mapping) and block.get("type") == "text"):
                raise Invalid(f"system.{j}.type: Input should be 'text'")
            _check_block(block, f"system.{j}", "user")
    elif system is not None and not isinstance(system, str):
        raise Invalid("system: Input should be a valid string or list")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, Mapping) or set(metadata) - {"user_id"}):
        raise Invalid("metadata: Extra inputs are not permitted")
    _check_messages(body["messages"])
    _check_tools(body)


# ---- the "model" -------------------------------------------------------------------------------------------


def block_text(block: Mapping[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":  # as text.message_text counts a tool call: name, then compact JSON arguments
        return f"{block.get('name', '')} {json.dumps(block.get('input'), separators=(',', ':'))}"
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return " ".join(block_text(b) for b in content if isinstance(b, Mapping))
        return str(content)
    return ""


def _blocks(content: Any) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []


def _reply_source(turn: Mapping[str, Any]) -> str:
    """What the echo answers: the turn's text blocks, else its last tool result (as OpenAI's last message)."""
    blocks = _blocks(turn.get("content"))
    texts = [block_text(b) for b in blocks if b.get("type") == "text"]
    if texts:
        return " ".join(texts)
    results = [block_text(b) for b in blocks if b.get("type") == "tool_result"]
    return results[-1] if results else ""


@dataclass
class Plan:
    input_tokens: int
    cache_read: int = 0
    cache_write: int = 0
    cache_ttl: str = "5m"
    reply: str = ""
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    calls: list[tuple[str, text.PlannedToolCall]] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return text.tool_call_tokens(c for _, c in self.calls) if self.calls else text.count_tokens(self.reply)

    def content(self) -> list[dict[str, Any]]:
        if self.calls:
            return [{"type": "tool_use", "id": i, "name": c.name, "input": c.arguments} for i, c in self.calls]
        return [{"type": "text", "text": self.reply}] if self.reply else []

    def usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write if self.cache_ttl == "5m" else 0,
                "ephemeral_1h_input_tokens": self.cache_write if self.cache_ttl == "1h" else 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def as_message(self, mid: str, model: str) -> dict[str, Any]:
        head = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": self.content()}
        tail = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        return {**head, **tail, "usage": self.usage(self.output_tokens)}

    def as_events(self, mid: str, model: str) -> list[dict[str, Any]]:
        start = {**self.as_message(mid, model), "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = self.usage(min(1, self.output_tokens))
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        for index, block in enumerate(self.content()):
            opened = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
            events.append({"type": "content_block_start", "index": index, "content_block": opened})
            if index == 0:
                events.append({"type": "ping"})
            if block["type"] == "text":
                deltas = [{"type": "text_delta", "text": p} for p in text.split_pieces(block["text"])]
            else:
                fragments = ["", *text.split_arguments(json.dumps(block["input"], separators=(",", ":")))]
                deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
            events.extend({"type": "content_block_delta", "index": index, "delta": d} for d in deltas)
            events.append({"type": "content_block_stop", "index": index})
        if len(events) == 1:
            events.append({"type": "ping"})
        usage = self.usage(self.output_tokens)
        del usage["cache_creation"], usage["service_tier"]  # message_delta carries the cumulative counts only
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        events.append({"type": "message_delta", "delta": delta, "usage": usage})
        events.append({"type": "message_stop"})
        return events


def _cache_prefix(body: Mapping[str, Any], pieces: list[tuple[Any, str]]) -> tuple[int, str] | None:
    """(index into ``pieces`` of the last cached block, its TTL); a top-level marker caches everything."""
    top = body.get("cache_control")
    marked = [i for i, (b, _) in enumerate(pieces) if isinstance(b, Mapping) and b.get("cache_control")]
    if isinstance(top, Mapping) and pieces:
        return len(pieces) - 1, str(top.get("ttl", "5m"))
    if not marked:
        return None
    return marked[-1], str(pieces[marked[-1]][0]["cache_control"].get("ttl", "5m"))


def plan_message(body: Mapping[str, Any], cache: set[str]) -> Plan:
    messages = [m for m in body["messages"] if isinstance(m, Mapping)]
    # Every prompt block in API order (tools, system, messages) with its text; tools cost no tokens (as in the
    # OpenAI fake, which counts message text only), but a marker on one still bounds the cached prefix.
    pieces: list[tuple[Any, str]] = [(t, "") for t in body.get("tools") or ()]
    pieces += [(b, block_text(b)) for b in _blocks(body.get("system"))]
    pieces += [(b, block_text(b)) for m in messages for b in _blocks(m.get("content"))]
    plan = Plan(input_tokens=sum(text.count_tokens(t) for _, t in pieces))
    prefix = _cache_prefix(body, pieces)
    if prefix is not None:
        end, plan.cache_ttl = prefix
        key = hashlib.sha256(json.dumps([body.get("model"), [b for b, _ in pieces[: end + 1]]]).encode()).hexdigest()
        cached = sum(text.count_tokens(t) for _, t in pieces[: end + 1])
        plan.input_tokens -= cached
        if key in cache:
            plan.cache_read = cached
        else:
            plan.cache_write = cached
            cache.add(key)
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    user_text = _reply_source(last)
    choice: Mapping[str, Any] = body["tool_choice"] if isinstance(body.get("tool_choice"), Mapping) else {}
    kind = choice.get("type", "auto")
    custom = [t for t in body.get("tools") or () if isinstance(t, Mapping) and t.get("type", "custom") == "custom"]
    after_results = any(b.get("type") == "tool_result" for b in _blocks(last.get("content")))
    if custom and kind != "none" and (kind in ("any", "tool") or not after_results):
        tools = [{"function": {"name": t["name"], "parameters": t["input_schema"]}} for t in custom]
        named = str(choice["name"]) if kind == "tool" else None
        single = choice.get("disable_parallel_tool_use") is True
        planned = text.plan_tool_calls(tools, user_text, named=named, parallel_allowed=not single)
        plan.calls = [(_rand("toolu_01"), c) for c in planned]
        plan.stop_reason = "tool_use"
        return plan
    full = text.echo_text(user_text)
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        full = text.json_reply(user_text, fmt.get("schema"))
    stops = [s for s in body.get("stop_sequences") or () if s]
    reply = text.limit_reply(full, stop=stops, max_tokens=body["max_tokens"])
    plan.reply = reply.content
    if reply.finish == "length":
        plan.stop_reason = "max_tokens"
    else:
        hits = [s for s in stops if full.find(s) == len(reply.content)]
        if hits:
            plan.stop_reason, plan.stop_sequence = "stop_sequence", hits[0]
    return plan


# ---- the server ------------------------------------------------------------------------------------------


def error_object(status: int, message: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    default_type, default_message = ERROR_TYPES.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}")
    )
    return {
        "type": "error",
        "error": {"type": error_type or default_type, "message": message or default_message},
        "request_id": _rand("req_011C"),
    }


class FakeAnthropic(FakeUpstream):
    """``with FakeAnthropic() as fake: anthropic.Anthropic(base_url=fake.base_url, api_key=fake.api_key)``.

    ``api_key=None`` accepts any (or no) key; ``models=None`` accepts any model name; ``response_models`` maps a
    requested alias to the dated name the answer reports (as the API does).
    """

    stream_content_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        *,
        api_key: str | None = "sk-ant-api03-fake-key",
        models: Iterable[str] | None = DEFAULT_MODELS,
        response_models: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models = None if models is None else frozenset(models)
        self.response_models = dict(response_models or {})
        self.prompt_cache: set[str] = set()
        super().__init__(host=host, port=port)

    @property
    def base_url(self) -> str:
        return self.url  # the API's paths start with /v1

    def _configure(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._add_headers)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self._messages)
        router.add_route("*", "/{tail:.*}", self._unknown)

    def error_body(self, status: int, fault: Fault | None, message: str | None = None) -> Any:
        return error_object(status, message or (fault.message if fault else None), fault.error_type if fault else None)

    def stream_error_frame(self, message: str | None) -> bytes:
        kind = _stream_error_type.get()
        payload = {"type": "error", "error": {"type": kind, "message": message or ERROR_TYPES[529][1]}}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"

    @staticmethod
    async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("request-id", _rand("req_011C"))
        response.headers.setdefault("anthropic-organization-id", "00000000-0000-4000-8000-000000000000")

    def _error(self, status: int, message: str, error_type: str | None = None) -> web.Response:
        return web.json_response(error_object(status, message, error_type), status=status)

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        if request.match_info.handler == self._unknown:
            return None
        bearer = request.headers.get("Authorization", "")
        key = request.headers.get("x-api-key") or (bearer[7:].strip() if bearer.startswith("Bearer ") else "")
        if self.api_key is not None and not key:
            return self._error(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            return self._error(401, "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if not version:
            return self._error(400, "anthropic-version: header is required")
        if version not in VERSIONS:
            return self._error(400, f"anthropic-version: invalid version {version!r}")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        rec = self.record(request)
        try:
            check_request(rec.json, request.headers["anthropic-version"])
        except Invalid as e:
            return self._error(400, str(e))
        body = rec.json
        model = body["model"]
        if self.models is not None and model not in self.models:
            return self._error(404, f"model: {model}")
        plan = plan_message(body, self.prompt_cache)
        mid, reported = _rand("msg_01"), self.response_models.get(model, model)
        if body.get("stream") is not True:
            return await self.send_json(request, plan.as_message(mid, reported))
        if rec.fault is not None:
            _stream_error_type.set(rec.fault.error_type or "overloaded_error")  # read by stream_error_frame
        frames = [
            f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode()
            for e in plan.as_events(mid, reported)
        ]
        return await self.send_stream(request, frames)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return self._error(404, "Not Found")

"""``FakeBedrock``: Bedrock Runtime's Converse, ConverseStream and InvokeModel (Titan / Cohere embeddings) as a real
local HTTP server that verifies SigV4 signatures the way AWS does.

* ``POST /model/{modelId}/converse`` → JSON; ``/converse-stream`` → ``application/vnd.amazon.eventstream`` frames
  (messageStart, contentBlockStart/Delta/Stop, messageStop, metadata; payloads padded with ``"p"``);
  ``/invoke`` → Titan ``{"embedding", "inputTextTokenCount"}`` or Cohere ``{"embeddings", ...}``.
* Signatures are recomputed from the request as received (raw path, query, the signed headers, the body's SHA-256)
  with the independent SigV4 implementation below, written from the AWS docs ("Create a signed AWS API request")
  and checked against AWS's published test-suite vectors in ``tests/unit/test_sigv4.py``. A wrong secret, an
  unknown key, a missing/different session token, a scope for another region/service or an ``X-Amz-Date`` more
  than 5 minutes off answer 403 in AWS's shape (``x-amzn-errortype`` + ``{"message"}``).
* Converse requests are validated like the service does (ValidationException, 400): the conversation starts with
  a user turn and alternates, text is not blank, images are png/jpeg/gif/webp base64, every toolResult answers a
  toolUse of the previous turn and every toolUse is answered, toolConfig is present when tool blocks are, tool
  names/ids match the API's patterns, inferenceConfig is in range (temperature and topP 0..1).
* Replies are the OpenAI fake's deterministic ones (:mod:`tests.fakes.text`, :func:`tests.fakes.openai_chat.plan_chat`
  on an OpenAI view of the Converse request), so expectations are computable: "Echo: <words of the last user or
  tool-result text>", tool calls to the first tool (the first two when the text says "parallel"), usage = words.
  Tool blocks stream at content blocks 0..n-1 with ids ``tooluse_<22 chars>``. A tool whose description says
  "never call this tool" (the gateway's placeholder) is never called.
* Faults: :mod:`tests.fakes.faults` -- status faults in AWS's shape (``code=`` names the exception, e.g.
  ``faults.status(429)`` is a ThrottlingException), ``error_after(n)`` sends an exception frame of type
  :attr:`FakeBedrock.stream_exception_type` after n frames, ``drop_after``/``stall_after``/``slow`` as usual.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from aiohttp import web

from aigw.providers.eventstream import encode_message, event_headers, exception_headers
from tests.fakes import text
from tests.fakes.base import FakeUpstream
from tests.fakes.faults import Fault
from tests.fakes.openai_chat import ChatPlan, plan_chat

ACCESS_KEY = "AKIDFAKEBEDROCK00001"
SECRET_KEY = "fakeBedrockSecret/Key+ForTestsOnly0123456"
DEFAULT_MODELS = frozenset({
    "anthropic.claude-3-5-sonnet-20240620-v1:0", "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "amazon.nova-lite-v1:0", "amazon.titan-embed-text-v2:0", "amazon.titan-embed-text-v1", "cohere.embed-english-v3",
})  # fmt: skip
# Exception name and message per status (the API model's httpStatusCode for each; Bedrock's wording).
ERRORS = {
    400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request. Try your request again."),
    424: ("ModelErrorException", "The model encountered an error processing the request."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error while processing the request."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
_CONVERSE_KEYS = frozenset(
    {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig", "additionalModelRequestFields",
     "additionalModelResponseFieldPaths", "promptVariables", "requestMetadata", "performanceConfig", "outputConfig",
     "serviceTier"}
)  # fmt: skip
_BLOCK_KINDS = frozenset({"text", "image", "document", "video", "toolUse", "toolResult", "guardContent", "cachePoint",
                          "reasoningContent", "citationsContent"})  # fmt: skip
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_PAD = string.ascii_letters + string.digits
_SKEW_S = 300  # AWS accepts an X-Amz-Date up to 5 minutes away from its clock
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_BAD_TOKEN = "The security token included in the request is invalid."


# ---- SigV4, from the AWS docs (independent of botocore) ---------------------------------------------------------


def _uri_encode(value: str, *, keep_slash: bool) -> str:
    # "URI-encode each byte... except the unreserved characters 'A'-'Z', 'a'-'z', '0'-'9', '-', '.', '_', '~'";
    # the path keeps its '/' separators.
    return quote(value, safe="-_.~/" if keep_slash else "-_.~")


def canonical_uri(raw_path: str) -> str:
    """Non-S3 services: normalise the path (RFC 3986 dot segments, no empty segments), then URI-encode it -- the
    path as it travelled, already encoded once, is encoded a second time."""
    segments: list[str] = []
    for seg in raw_path.split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg and seg != ".":
            segments.append(seg)
    path = "/" + "/".join(segments) + ("/" if raw_path.endswith("/") and segments else "")
    return _uri_encode(path, keep_slash=True)


def canonical_query(raw_query: str) -> str:
    pairs = [(_uri_encode(k, keep_slash=False), _uri_encode(v, keep_slash=False))
             for k, v in parse_qsl(raw_query, keep_blank_values=True)]  # fmt: skip
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    signed: Sequence[str],
    body_hash: str,
) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(" ".join(value.split()))  # Trimall
    lines = [f"{name}:{','.join(values.get(name, []))}" for name in signed]
    return "\n".join(
        [method.upper(), canonical_uri(raw_path), canonical_query(raw_query), *lines, "", ";".join(signed), body_hash]
    )


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signature(secret: str, amz_date: str, region: str, service: str, creq: str) -> str:
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), amz_date[:8]), region), service), "aws4_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> dict[str, str] | None:
    algo, _, rest = value.partition(" ")
    if algo != "AWS4-HMAC-SHA256":
        return None
    parts = dict(p.strip().partition("=")[::2] for p in rest.split(","))
    return parts if {"Credential", "SignedHeaders", "Signature"} <= parts.keys() else None


# ---- Converse validation -----------------------------------------------------------------------------------------

_START_USER = "A conversation must start with a user message. Try again with a conversation that starts with a user "
_ALTERNATE = "A conversation must alternate between user and assistant roles. Make sure the conversation alternates "
_NEEDS_TOOL_CONFIG = "The toolConfig field must be defined when using toolUse and toolResult content blocks."


class Invalid(Exception):
    """A ValidationException the fake answers with (the message is the service's wording where it is known)."""


def _require(condition: object, message: str) -> None:
    if not condition:
        raise Invalid(message)


def _is_base64(raw: object) -> bool:
    try:
        return isinstance(raw, str) and len(base64.b64decode(raw, validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


def _check_block(block: Any, where: str, role: str) -> None:
    one = isinstance(block, dict) and len(block) == 1 and next(iter(block)) in _BLOCK_KINDS
    _require(one, f"The ContentBlock object at {where} must set exactly one of its members.")
    kind, value = next(iter(block.items()))
    if kind == "text":
        blank = (
            f"The text field in the ContentBlock object at {where} is blank. Add text to the text field, and try again."
        )
        _require(isinstance(value, str) and value.strip(), blank)
    elif kind == "image":
        _require(value.get("format") in ("png", "jpeg", "gif", "webp"), f"{where}.image.format: png|jpeg|gif|webp")
        _require(_is_base64((value.get("source") or {}).get("bytes")), f"{where}.image.source.bytes: invalid image")
    elif kind == "toolUse":
        _require(role == "assistant", f"{where}: toolUse blocks are only allowed in assistant messages.")
        ok = _TOOL_USE_ID.fullmatch(str(value.get("toolUseId"))) and _TOOL_NAME.fullmatch(str(value.get("name")))
        _require(ok and isinstance(value.get("input"), dict), f"{where}.toolUse: bad toolUseId, name or input")
    elif kind == "toolResult":
        _require(role == "user", f"{where}: toolResult blocks are only allowed in user messages.")
        _require(isinstance(value.get("content"), list), f"{where}.toolResult.content: a list is required")


def _check_messages(messages: Any) -> None:
    ok = isinstance(messages, list) and messages and isinstance(messages[0], dict)
    _require(ok and messages[0].get("role") == "user", _START_USER + "message.")
    pending: list[str] = []  # toolUse ids of the previous assistant turn, each to be answered now
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        _require(role in ("user", "assistant") and (i == 0 or role != messages[i - 1]["role"]), _ALTERNATE + "...")
        content = msg.get("content")
        _require(
            isinstance(content, list) and content, f"The content field in the Message object at messages.{i} is empty."
        )
        for j, block in enumerate(content):
            _check_block(block, f"messages.{i}.content.{j}", str(role))
        if role == "assistant":
            pending = [b["toolUse"]["toolUseId"] for b in content if "toolUse" in b]
            continue
        results = [b["toolResult"].get("toolUseId") for b in content if "toolResult" in b]
        extra = f"The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks of "
        _require(len(results) <= len(pending), extra + "previous turn.")
        missing = f"Expected toolResult blocks at messages.{i}.content for the following Ids: {', '.join(pending)}"
        _require(sorted(results) == sorted(pending), missing)
        pending = []


def _check_tool_config(config: Any, needed: bool) -> None:
    _require(config is not None or not needed, _NEEDS_TOOL_CONFIG)
    if config is None:
        return
    tools = config.get("tools")
    _require(isinstance(tools, list) and tools, "toolConfig.tools: must have at least 1 item")
    names = []
    for i, tool in enumerate(tools):
        spec = tool.get("toolSpec") or {}
        _require(_TOOL_NAME.fullmatch(str(spec.get("name"))), f"toolConfig.tools.{i}.toolSpec.name: [a-zA-Z0-9_-]+")
        _require(isinstance((spec.get("inputSchema") or {}).get("json"), dict), f"toolConfig.tools.{i}: inputSchema")
        _require(spec.get("description", "x"), f"toolConfig.tools.{i}.toolSpec.description: must not be empty")
        names.append(spec["name"])
    choice = config.get("toolChoice")
    if choice is not None:
        _require(len(choice) == 1 and next(iter(choice)) in ("auto", "any", "tool"), "toolConfig.toolChoice: one of")
        _require("tool" not in choice or choice["tool"].get("name") in names, "toolConfig.toolChoice.tool.name")


def validate_converse(body: Any) -> None:
    """Raise :class:`Invalid` with the ValidationException the service would give this Converse body."""
    _require(isinstance(body, dict), "Malformed input request, please reformat your input and try again.")
    extra = sorted(set(body) - _CONVERSE_KEYS)
    _require(not extra, f"Malformed input request: extraneous key [{', '.join(extra)}] is not permitted")
    _check_messages(body.get("messages"))
    has_tools = any("toolUse" in b or "toolResult" in b for m in body["messages"] for b in m["content"])
    _check_tool_config(body.get("toolConfig"), has_tools)
    for i, block in enumerate(body.get("system") or []):
        _require(
            str(block.get("text", "")).strip(), f"The text field in the SystemContentBlock at system.{i} is blank."
        )
    inference = body.get("inferenceConfig") or {}
    for key in ("temperature", "topP"):
        value = inference.get(key, 0)
        _require(isinstance(value, int | float) and 0 <= value <= 1, f"inferenceConfig.{key}: {value} not in [0, 1]")
    max_tokens = inference.get("maxTokens", 1)
    _require(isinstance(max_tokens, int) and max_tokens >= 1, "inferenceConfig.maxTokens: must be at least 1")
    stops = inference.get("stopSequences", [])
    _require(all(isinstance(s, str) and s for s in stops), "inferenceConfig.stopSequences: non-empty strings")


# ---- the fake ----------------------------------------------------------------------------------------------------


def _result_text(block: Mapping[str, Any]) -> str:
    parts = block.get("content") or []
    return " ".join(str(p["text"]) if "text" in p else json.dumps(p.get("json")) for p in parts if isinstance(p, dict))


def openai_view(body: Mapping[str, Any], *, unlimited: bool = False) -> dict[str, Any]:
    """The Converse request as the OpenAI-shaped body :func:`plan_chat` understands."""
    messages: list[dict[str, Any]] = []
    system = " ".join(b["text"] for b in body.get("system") or [] if "text" in b)
    if system:
        messages.append({"role": "system", "content": system})
    for turn in body["messages"]:
        content = turn["content"]
        texts = " ".join(b["text"] for b in content if "text" in b)
        if turn["role"] == "assistant":
            calls = [{"function": {"name": b["toolUse"]["name"], "arguments": json.dumps(b["toolUse"]["input"])}}
                     for b in content if "toolUse" in b]  # fmt: skip
            messages.append({"role": "assistant", "content": texts, "tool_calls": calls})
            continue
        results = [_result_text(b["toolResult"]) for b in content if "toolResult" in b]
        if results:
            messages.append({"role": "tool", "content": " ".join(results)})
        if texts:
            messages.append({"role": "user", "content": texts})
    view: dict[str, Any] = {"messages": messages}
    config = body.get("toolConfig") or {}
    specs = [t["toolSpec"] for t in config.get("tools", []) if "toolSpec" in t]
    view["tools"] = [
        {"type": "function", "function": {"name": s["name"], "parameters": s["inputSchema"]["json"]}}
        for s in specs
        if "never call this tool" not in str(s.get("description", "")).lower()
    ]
    choice = config.get("toolChoice") or {}
    if "tool" in choice:
        view["tool_choice"] = {"type": "function", "function": {"name": choice["tool"]["name"]}}
    fmt = (body.get("outputConfig") or {}).get("textFormat")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = json.loads(fmt["structure"]["jsonSchema"]["schema"])
        view["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    inference = body.get("inferenceConfig") or {}
    if not unlimited:
        if "maxTokens" in inference:
            view["max_tokens"] = inference["maxTokens"]
        view["stop"] = inference.get("stopSequences", [])
    return view


def stop_reason(body: Mapping[str, Any], plan: ChatPlan) -> str:
    if plan.tool_calls:
        return "tool_use"
    if plan.reply is not None and plan.reply.finish == "length":
        return "max_tokens"
    full = plan_chat(openai_view(body, unlimited=True)).reply
    cut = plan.reply is not None and full is not None and plan.reply.content != full.content
    return "stop_sequence" if cut else "end_turn"


class FakeBedrock(FakeUpstream):
    """``with FakeBedrock() as fake: boto3.client("bedrock-runtime", endpoint_url=fake.url, region_name=fake.region,
    aws_access_key_id=fake.access_key, aws_secret_access_key=fake.secret_key)``. ``models=None`` accepts any id."""

    stream_content_type = "application/vnd.amazon.eventstream"

    def __init__(
        self,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        session_token: str | None = None,
        region: str = "us-east-1",
        models: Iterable[str] | None = DEFAULT_MODELS,
        verify_signatures: bool = True,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.access_key, self.secret_key, self.session_token = access_key, secret_key, session_token
        self.region = region
        self.models = None if models is None else frozenset(models)
        self.verify_signatures = verify_signatures
        self.clock = clock
        self.stream_exception_type = "modelStreamErrorException"  # what error_after(n) sends mid-stream
        self.cache_read_tokens = 0  # reported as cacheReadInputTokens/cacheWriteInputTokens when non-zero
        self.cache_write_tokens = 0
        self.raw_paths: list[str] = []  # request paths exactly as they arrived (percent-encoding intact)
        super().__init__(host=host, port=port)

    def _configure(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._add_headers)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/{tail:.*}", self._dispatch)

    # -- AWS error shapes ------------------------------------------------------------------------------------------

    def error_body(self, status: int, fault: Fault | None, message: str | None = None) -> Any:
        default = ERRORS.get(status, ("", f"HTTP {status}"))[1]
        return {"message": message or (fault.message if fault else None) or default}

    def stream_error_frame(self, message: str | None) -> bytes:
        body = {"message": message or "The model stream was interrupted. Try your request again."}
        return encode_message(exception_headers(self.stream_exception_type), json.dumps(body).encode())

    @staticmethod
    def error(status: int, error_type: str, message: str) -> web.Response:
        headers = {"x-amzn-ErrorType": error_type + _NAMESPACE}
        return web.json_response({"message": message}, status=status, headers=headers)

    def _invalid(self, message: str) -> web.Response:
        return self.error(400, "ValidationException", message)

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
        if response.status >= 400 and "x-amzn-ErrorType" not in response.headers:
            fault = self.record(request).fault
            name = (fault.code if fault else None) or ERRORS.get(response.status, ("InternalServerException",))[0]
            response.headers["x-amzn-ErrorType"] = name + _NAMESPACE

    # -- SigV4 -----------------------------------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        self.raw_paths.append(request.raw_path.partition("?")[0])
        if not self.verify_signatures:
            return None
        auth = parse_authorization(request.headers.get("Authorization", ""))
        if auth is None:
            return self.error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        key, _, scope = auth["Credential"].partition("/")
        if key != self.access_key or request.headers.get("X-Amz-Security-Token") != self.session_token:
            return self.error(403, "UnrecognizedClientException", _BAD_TOKEN)
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            stamp = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC).timestamp()
        except ValueError:
            return self.error(403, "IncompleteSignatureException", "A valid 'X-Amz-Date' header is required.")
        now = self.clock()
        if abs(now - stamp) > _SKEW_S:
            return self.error(403, "InvalidSignatureException", _skew_message(amz_date, stamp, now))
        if scope != f"{amz_date[:8]}/{self.region}/bedrock/aws4_request":
            return self.error(403, "InvalidSignatureException", f"Credential should be scoped correctly: {scope}")
        signed = auth["SignedHeaders"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return self.error(403, "InvalidSignatureException", "'Host' and 'X-Amz-Date' must be signed headers.")
        body_hash = hashlib.sha256(self.record(request).body).hexdigest()
        declared = request.headers.get("x-amz-content-sha256")
        if declared is not None and declared not in (body_hash, "UNSIGNED-PAYLOAD"):
            return self.error(400, "XAmzContentSHA256Mismatch", "x-amz-content-sha256 does not match the body.")
        path, _, query = request.raw_path.partition("?")
        creq = canonical_request(request.method, path, query, request.headers.items(), signed, declared or body_hash)
        expected = signature(self.secret_key, amz_date, self.region, "bedrock", creq)
        if not hmac.compare_digest(expected, auth["Signature"]):
            return self.error(403, "InvalidSignatureException", _BAD_SIGNATURE)
        return None

    # -- routing -----------------------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = request.raw_path.partition("?")[0].split("/")
        if request.method != "POST" or len(parts) != 4 or parts[1] != "model":
            return self.error(404, "UnknownOperationException", f"Unknown operation {request.method} {request.path}")
        model, op, body = unquote(parts[2]), parts[3], self.record(request).json
        if self.models is not None and model not in self.models:
            return self._invalid("The provided model identifier is invalid.")
        try:
            if op in ("converse", "converse-stream"):
                _require("embed" not in model, "This action doesn't support the model that you provided.")
                validate_converse(body)
                return await self._converse(request, body, stream=op == "converse-stream")
            if op == "invoke":
                _require(isinstance(body, dict), "Malformed input request, please reformat your input and try again.")
                if "cohere.embed" in model:
                    return await self._cohere(request, body)
                return await self._titan(request, model, body)
        except Invalid as exc:
            return self._invalid(str(exc))
        return self.error(404, "UnknownOperationException", f"Unknown operation {op}")

    # -- Converse ----------------------------------------------------------------------------------------------------

    def _usage(self, plan: ChatPlan) -> dict[str, int]:
        usage = {"inputTokens": plan.prompt_tokens, "outputTokens": plan.completion_tokens}
        cache = {"cacheReadInputTokens": self.cache_read_tokens, "cacheWriteInputTokens": self.cache_write_tokens}
        usage["totalTokens"] = sum(usage.values()) + sum(cache.values())
        return usage | (cache if any(cache.values()) else {})

    async def _converse(self, request: web.Request, body: dict[str, Any], *, stream: bool) -> web.StreamResponse:
        plan = plan_chat(openai_view(body))
        calls = [("tooluse_" + "".join(secrets.choice(_PAD) for _ in range(22)), c) for c in plan.tool_calls]
        reason, usage = stop_reason(body, plan), self._usage(plan)
        reply = plan.reply.content if plan.reply is not None and not calls else ""
        if not stream:
            content: list[Any] = [{"toolUse": {"toolUseId": t, "name": c.name, "input": c.arguments}} for t, c in calls]
            message: dict[str, Any] = {"role": "assistant", "content": content or ([{"text": reply}] if reply else [])}
            answer = {
                "output": {"message": message},
                "stopReason": reason,
                "usage": usage,
                "metrics": {"latencyMs": 42},
            }
            return await self.send_json(request, answer)
        frames = [_frame("messageStart", {"role": "assistant"})]
        for index, (tid, call) in enumerate(calls):
            start = {"toolUse": {"toolUseId": tid, "name": call.name}}
            frames.append(_frame("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            for fragment in text.split_arguments(call.arguments_json):
                delta = {"toolUse": {"input": fragment}}
                frames.append(_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            frames.append(_frame("contentBlockStop", {"contentBlockIndex": index}))
        if reply:
            pieces = text.split_pieces(reply)
            frames += [_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in pieces]
            frames.append(_frame("contentBlockStop", {"contentBlockIndex": 0}))
        frames.append(_frame("messageStop", {"stopReason": reason}))
        frames.append(_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 42}}))
        return await self.send_stream(request, frames)

    # -- InvokeModel (embeddings) ------------------------------------------------------------------------------------

    async def _cohere(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        texts = body.get("texts")
        ok = isinstance(texts, list) and 0 < len(texts) <= 96 and all(isinstance(t, str) and t for t in texts)
        _require(ok, "Malformed input request: #/texts: expected 1 to 96 non-empty strings")
        kinds = ("search_document", "search_query", "classification", "clustering")
        _require(body.get("input_type") in kinds, "Malformed input request: #: required key [input_type] not found")
        assert isinstance(texts, list)
        vectors = [text.embedding_vector(t, 1024) for t in texts]
        answer = {"id": str(uuid.uuid4()), "embeddings": vectors, "response_type": "embeddings_floats", "texts": texts}
        tokens = sum(text.count_tokens(t) for t in texts)
        return await self.send_json(request, answer, headers={"X-Amzn-Bedrock-Input-Token-Count": str(tokens)})

    async def _titan(self, request: web.Request, model: str, body: dict[str, Any]) -> web.StreamResponse:
        _require("titan-embed" in model, "The fake serves InvokeModel for embedding models only.")
        v1 = model.endswith(("titan-embed-text-v1", "titan-embed-g1-text-02"))  # G1 takes inputText only
        extra = sorted(
            set(body) - ({"inputText"} if v1 else {"inputText", "dimensions", "normalize", "embeddingTypes"})
        )
        _require(not extra, f"Malformed input request: extraneous key [{', '.join(extra)}] is not permitted")
        inp = body.get("inputText")
        _require(isinstance(inp, str) and inp, "Malformed input request: expected minLength: 1, actual: 0")
        dim = body.get("dimensions", 1536 if v1 else 1024)
        _require(dim in ((1536,) if v1 else (256, 512, 1024)), f"#/dimensions: {dim} is not a valid enum value")
        assert isinstance(inp, str)
        vec = text.embedding_vector(inp, dim)
        tokens = text.count_tokens(inp)
        answer: dict[str, Any] = {"embedding": vec, "inputTextTokenCount": tokens}
        if not v1:
            answer["embeddingsByType"] = {"float": vec}
        return await self.send_json(request, answer, headers={"X-Amzn-Bedrock-Input-Token-Count": str(tokens)})


def _frame(event_type: str, payload: dict[str, Any]) -> bytes:
    # Real ConverseStream payloads carry a random-length "p" padding field (it hides the token lengths).
    padded = {**payload, "p": _PAD[: 1 + secrets.randbelow(len(_PAD))]}
    return encode_message(event_headers(event_type), json.dumps(padded, separators=(",", ":")).encode())


def _skew_message(amz_date: str, stamp: float, now: float) -> str:
    now_s = datetime.fromtimestamp(now, UTC).strftime(_AMZ_DATE)
    if stamp < now:
        edge = datetime.fromtimestamp(now - _SKEW_S, UTC).strftime(_AMZ_DATE)
        return f"Signature expired: {amz_date} is now earlier than {edge} ({now_s} - 5 min.)"
    edge = datetime.fromtimestamp(now + _SKEW_S, UTC).strftime(_AMZ_DATE)
    return f"Signature not yet current: {amz_date} is still later than {edge} ({now_s} + 5 min.)"

"""``FakeOpenAI``: the OpenAI REST API as a real local HTTP server (chat completions, embeddings, models).

Wire shapes follow the official API reference and recorded gpt-4o-mini traffic, e.g. a streamed tool call::

    data: {"id":"chatcmpl-…","object":"chat.completion.chunk",…,"choices":[{"index":0,"delta":{"role":"assistant",
          "content":null,"tool_calls":[{"index":0,"id":"call_…","type":"function","function":{"name":"GetPersonAge",
          "arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}
    data: {…"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\""}}]}…}
    …
    data: {…"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}
    data: {…"choices":[],"usage":{"prompt_tokens":61,…}}          (only with stream_options.include_usage)
    data: [DONE]

The reply rules (echo text, token counts, tool-call choice, truncation) are in :mod:`tests.fakes.text`. The response
``model`` is the requested name unless ``response_models`` maps it (the real API answers "gpt-4o-mini" with a dated
snapshot such as "gpt-4o-mini-2024-07-18"). Not emulated: ``n`` > 1 (always one choice), logprobs (always null),
audio, ``max_tokens`` on tool calls (they are never truncated), the Responses API.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from tests.fakes import text
from tests.fakes.base import FakeUpstream
from tests.fakes.faults import Fault
from tests.fakes.openai_chat import plan_chat

DEFAULT_MODELS = frozenset(
    {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small", "text-embedding-3-large"}
)
_ALNUM = string.ascii_letters + string.digits

# (type, code, message) per status, as OpenAI words them.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble "
    "figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


class _Default:
    """Marks "use the status's default" where ``None`` means JSON null."""


DEFAULT = _Default()


def error_object(
    status: int,
    message: str | None = None,
    *,
    code: str | None | _Default = DEFAULT,
    error_type: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    default_type, default_code, default_message = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}")
    )
    return {
        "error": {
            "message": message or default_message,
            "type": error_type or default_type,
            "param": param,
            "code": default_code if isinstance(code, _Default) else code,
        }
    }


class FakeOpenAI(FakeUpstream):
    """``with FakeOpenAI() as fake: OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)``.

    ``api_key=None`` accepts any (or no) key; ``models=None`` accepts any model name.
    """

    stream_content_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        *,
        api_key: str | None = "sk-fake-openai-key",
        models: Iterable[str] | None = DEFAULT_MODELS,
        embedding_dim: int = 1536,
        obfuscation: bool = False,
        response_models: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models = None if models is None else frozenset(models)
        self.embedding_dim = embedding_dim
        self.obfuscation = obfuscation
        self.response_models = dict(response_models or {})
        super().__init__(host=host, port=port)

    def _configure(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._add_headers)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._chat)
        router.add_post("/v1/embeddings", self._embeddings)
        router.add_get("/v1/models", self._list_models)
        router.add_get("/v1/models/{model}", self._get_model)
        router.add_route("*", "/{tail:.*}", self._unknown)

    # -- provider error shapes ---------------------------------------------------------------------------------

    def error_body(self, status: int, fault: Fault | None, message: str | None = None) -> Any:
        if fault is not None:
            code = DEFAULT if fault.code is None else fault.code
            return error_object(status, message or fault.message, code=code, error_type=fault.error_type)
        return error_object(status, message)

    def stream_error_frame(self, message: str | None) -> bytes:
        # The SDK raises APIError on an SSE event whose JSON has an "error" key (openai/_streaming.py).
        return self._sse(error_object(500, message))

    def encode_json(self, body: Any) -> bytes:
        return json.dumps(body, indent=2).encode()  # non-streamed bodies come pretty-printed

    def _error(self, status: int, message: str | None = None, **kw: Any) -> web.Response:
        return web.Response(
            status=status, body=self.encode_json(error_object(status, message, **kw)), content_type="application/json"
        )

    @staticmethod
    async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-request-id", "req_" + secrets.token_hex(16))
        response.headers.setdefault("openai-version", "2020-10-01")
        response.headers.setdefault("openai-processing-ms", "1")

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        if request.match_info.handler == self._unknown:
            return None  # unknown URLs answer 404 whatever the key
        auth = request.headers.get("Authorization", "")
        if self.api_key is not None:
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                return self._error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    code=None,
                )
            key = auth[7:].strip()
            if key != self.api_key:
                masked = key[:3] + "*" * max(len(key) - 7, 0) + key[-4:]
                return self._error(
                    401,
                    f"Incorrect API key provided: {masked}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                )
        return None

    def _check_body(self, request: web.Request, *required: str) -> tuple[dict[str, Any], web.Response | None]:
        body = self.record(request).json
        if not isinstance(body, dict):
            return {}, self._error(400, _BAD_JSON)
        if not body.get("model"):
            return body, self._error(400, "you must provide a model parameter")
        for name in required:
            if name not in body:
                return body, self._error(
                    400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
                )
        model = body["model"]
        if self.models is not None and model not in self.models:
            return body, self._error(
                404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
            )
        return body, None

    # -- chat completions --------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, bad = self._check_body(request, "messages")
        if bad is not None:
            return bad
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return self._error(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                param="messages",
                code="empty_array",
            )
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        if stream_options is not None and not stream:
            # The API's own words (measured against api.openai.com by several public projects).
            return self._error(
                400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        completion = plan_chat(body)
        created, cid = int(time.time()), "chatcmpl-" + _rand(29)
        reported = self.response_models.get(body["model"], body["model"])
        if not stream:
            return await self.send_json(request, completion.as_response(cid, created, reported))
        opts = stream_options if isinstance(stream_options, Mapping) else {}
        include_usage = opts.get("include_usage") is True
        obfuscate = self.obfuscation and opts.get("include_obfuscation", True) is not False
        chunks = completion.as_chunks(cid, created, reported, include_usage)
        if obfuscate:
            for chunk in chunks:
                chunk["obfuscation"] = _rand(8)
        return await self.send_stream(request, [self._sse(c) for c in chunks], terminator=b"data: [DONE]\n\n")

    @staticmethod
    def _sse(payload: Any) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    # -- embeddings --------------------------------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, bad = self._check_body(request, "input")
        if bad is not None:
            return bad
        inputs = _embedding_inputs(body["input"])
        if inputs is None:
            return self._error(
                400,
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            )
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return self._error(
                400,
                f"Invalid value for 'encoding_format': '{fmt}'. Expected 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        dim = body.get("dimensions") or self.embedding_dim
        data = []
        for i, (seed, _tokens) in enumerate(inputs):
            vec = text.embedding_vector(seed, int(dim))
            value: Any = base64.b64encode(text.float32_le_bytes(vec)).decode() if fmt == "base64" else vec
            data.append({"object": "embedding", "index": i, "embedding": value})
        used = sum(tokens for _seed, tokens in inputs)
        return await self.send_json(
            request,
            {
                "object": "list",
                "data": data,
                "model": self.response_models.get(body["model"], body["model"]),
                "usage": {"prompt_tokens": used, "total_tokens": used},
            },
        )

    # -- models ------------------------------------------------------------------------------------------------

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        names = sorted(self.models or DEFAULT_MODELS)
        return await self.send_json(request, {"object": "list", "data": [_model_object(m) for m in names]})

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        if self.models is not None and name not in self.models:
            return self._error(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return await self.send_json(request, _model_object(name))

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return self._error(404, f"Invalid URL ({request.method} {request.path})", code=None)


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "system"}


def _embedding_inputs(value: Any) -> list[tuple[str, int]] | None:
    """(seed text, token count) per input: strings count words; token arrays count their ints."""
    if isinstance(value, str):
        return [(value, text.count_tokens(value))] if value else None
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [(" ".join(map(str, value)), len(value))]
        out: list[tuple[str, int]] = []
        for item in value:
            if isinstance(item, str) and item:
                out.append((item, text.count_tokens(item)))
            elif isinstance(item, list) and item and all(isinstance(v, int) for v in item):
                out.append((" ".join(map(str, item)), len(item)))
            else:
                return None
        return out
    return None

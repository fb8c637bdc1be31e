"""Ollama through its native API (``/api/chat``, ``/api/embed``), translated to and from OpenAI's shapes.

Native rather than Ollama's ``/v1`` compatibility layer because the native API reports token counts and tool
calls completely. Sources for the Ollama facts relied on below: github ollama/ollama ``docs/api.md``,
``docs/api/errors.mdx``, ``api/types.go`` and ``server/routes.go``; the ``ollama`` Python SDK's ``_types.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from aigw.errors import InvalidRequest, UpstreamError
from aigw.providers.base import (
    ChatInput,
    Completion,
    EmbeddingsInput,
    EmbeddingsResult,
    Framing,
    StreamDecoder,
    StreamIdentity,
    UpstreamEvent,
    UpstreamRequest,
    parse_retry_after,
)
from aigw.providers.convert import arguments_json, arguments_object, data_uri, embedding, json_object, json_schema
from aigw.providers.output import ChunkWriter, WriterStream, completion
from aigw.schema import chat as oa  # the OpenAI side of every translation
from aigw.schema.embeddings import EmbeddingResponse, EmbeddingUsage
from aigw.schema.usage import Usage

_JSON = {"content-type": "application/json"}


# ---- request ---------------------------------------------------------------------------------------------


def _text(content: str | Sequence[oa.TextPart | oa.RefusalPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(p.text if isinstance(p, oa.TextPart) else p.refusal for p in content)


def _image(url: str) -> str:
    # docs/api.md: `images` is "a list of images ... encoded in Base64" -- bare base64, no data-URI prefix.
    # Ollama never fetches URLs itself, so an http(s) image cannot be forwarded (and the gateway does no I/O).
    inline = data_uri(url)
    if inline is not None:
        return inline[1]
    kind = "an http(s) URL" if url.startswith(("http://", "https://")) else "any other URI"
    msg = f"Ollama takes only inline images: send image_url as a data:image/...;base64 URI, not {kind}"
    raise InvalidRequest(msg, param="messages")


def _tool_calls(calls: Sequence[oa.ToolCall]) -> list[dict[str, Any]]:
    # Ollama wants `arguments` as a JSON object (api/types.go ToolCallFunction); OpenAI sends a string.
    return [{"id": tc.id, "function": {"name": tc.function.name, "arguments": arguments_object(tc)}} for tc in calls]


def _messages(messages: Sequence[oa.Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for m in messages:
        if isinstance(m, oa.SystemMessage | oa.DeveloperMessage):
            out.append({"role": "system", "content": _text(m.content)})
        elif isinstance(m, oa.UserMessage):
            if isinstance(m.content, str):
                out.append({"role": "user", "content": m.content})
                continue
            texts, images = [], []
            for p in m.content:
                if isinstance(p, oa.TextPart):
                    texts.append(p.text)
                elif isinstance(p, oa.ImagePart):
                    images.append(_image(p.image_url.url))
                else:
                    raise InvalidRequest(f"Ollama does not accept {type(p).__name__} content", param="messages")
            msg: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
            if images:
                msg["images"] = images
            out.append(msg)
        elif isinstance(m, oa.AssistantMessage):
            msg = {"role": "assistant", "content": _text(m.content)}
            calls = list(m.tool_calls or ())
            if m.function_call is not None:  # the deprecated single-call form
                calls.append(oa.ToolCall(id=f"call_{m.function_call.name}", function=m.function_call))
            if calls:
                msg["tool_calls"] = _tool_calls(calls)
                names.update((tc.id, tc.function.name) for tc in calls)
            out.append(msg)
        elif isinstance(m, oa.ToolMessage):
            # docs/api.md: "`tool_name` (optional): add the name of the tool that was executed to inform the
            # model of the result". OpenAI sends only the call id: look the name up in the assistant turn.
            msg = {"role": "tool", "content": _text(m.content), "tool_call_id": m.tool_call_id}
            if m.tool_call_id in names:
                msg["tool_name"] = names[m.tool_call_id]
            out.append(msg)
        elif isinstance(m, oa.FunctionMessage):
            out.append({"role": "tool", "content": m.content or "", "tool_name": m.name})
    return out


def _tools(tools: Sequence[oa.Tool]) -> list[dict[str, Any]]:
    # Ollama takes OpenAI's {"type": "function", "function": {...}} tool shape (docs/api.md).
    out = []
    for t in tools:
        if t.type != "function":
            raise InvalidRequest(f"Ollama supports only function tools, not {t.type!r}", param="tools")
        fn = {
            "name": t.function.name,
            "description": t.function.description,
            "parameters": t.function.parameters,
        }
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return out


def _format(rf: Mapping[str, Any]) -> Any:
    # docs/api.md: "`format`: the format to return a response in. Format can be `json` or a JSON schema."
    kind = rf.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return json_schema(rf) or "json"
    if kind == "text":
        return None
    raise InvalidRequest(f"unsupported response_format type {kind!r}", param="response_format")


def _options(req: oa.ChatCompletionRequest) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(req, key)
        if value is not None:
            opts[key] = value
    if req.stop is not None:
        opts["stop"] = [req.stop] if isinstance(req.stop, str) else req.stop
    if req.output_limit is not None:  # max_completion_tokens wins over the deprecated max_tokens
        opts["num_predict"] = req.output_limit
    return opts


def _keep_alive(value: str) -> str | float:
    # api/types.go Duration.UnmarshalJSON: a JSON string goes through Go's time.ParseDuration ("5m", "1h";
    # "-1" fails: "missing unit") while a JSON number means seconds, negative = forever: send numbers as such.
    try:
        n = float(value)
    except ValueError:
        return value
    return (int(n) if n.is_integer() else n) if math.isfinite(n) else value


# ---- response --------------------------------------------------------------------------------------------


def _count(obj: Mapping[str, Any], key: str) -> int:
    v = obj.get(key)
    return v if isinstance(v, int) else 0


def _usage(obj: Mapping[str, Any]) -> Usage:
    # api/types.go Metrics: every count is `omitempty`, so 0 is absent; and servers before ollama/ollama#5371
    # (mid-2024) omitted prompt_eval_count when the whole prompt came from the KV cache (issue #2068). Missing
    # means 0 either way. `prompt_eval_cached_count` (ollama/ollama#17943) is a part of prompt_eval_count.
    return Usage(
        prompt_tokens=_count(obj, "prompt_eval_count"),
        completion_tokens=_count(obj, "eval_count"),
        cached_prompt_tokens=_count(obj, "prompt_eval_cached_count"),
    )


def _finish(obj: Mapping[str, Any], tool_calls: bool) -> str:
    # done_reason is "stop", "length", or "load"/"unload" for the empty-messages (un)load requests.
    if tool_calls:
        return "tool_calls"
    return "length" if obj.get("done_reason") == "length" else "stop"


def _model(obj: Mapping[str, Any], fallback: str) -> str:
    m = obj.get("model")
    return m if isinstance(m, str) and m else fallback


def _message(obj: Mapping[str, Any]) -> tuple[str, list[Any]]:
    # `message.thinking` (reasoning models) is dropped: OpenAI's chat schema has no field for it, and folding
    # it into `content` would change the answer the client sees.
    msg = obj.get("message")
    if not isinstance(msg, dict):
        return "", []
    content, calls = msg.get("content"), msg.get("tool_calls")
    return (content if isinstance(content, str) else ""), (calls if isinstance(calls, list) else [])


def _call(raw: Any, index: int, ident: StreamIdentity) -> oa.ResponseToolCall:
    fn = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise UpstreamError("Ollama sent a malformed tool call", upstream_status=502)
    args = fn.get("arguments")
    arguments = args if isinstance(args, str) else arguments_json(args)
    # docs/api.md shows tool calls without an id; servers since 2025 add a random "call_xxxxxxxx"
    # (server/routes.go toolCallId). Keep it when present, else derive a stable one from the completion id.
    tid = raw.get("id")
    if not (isinstance(tid, str) and tid):
        tid = f"call_{ident.id.rpartition('-')[2]}_{index}"
    return oa.ResponseToolCall(id=tid, function=oa.FunctionCall(name=fn["name"], arguments=arguments))


def _first_call(calls: list[Any], *, already: int = 0) -> list[Any]:
    # parallel_tool_calls: false. Ollama has no such switch (nor any tool_choice), so the model may still answer
    # with several calls: keep only the first one of the response (`already` = calls emitted before) and drop
    # the rest unread. Usage stays as reported: the upstream did generate (and bill) the dropped calls' tokens.
    return calls[: max(0, 1 - already)]


class OllamaStreamDecoder(WriterStream):
    """NDJSON lines of /api/chat → OpenAI chunks. Each line is a whole ChatResponse: `message.content` is a
    fragment, tool calls arrive whole inside one line, and the last line has `done: true` plus the counts.

    ``single_tool_call`` (the client sent ``parallel_tool_calls: false``): only the first tool call is emitted."""

    __slots__ = ("_done", "_ident", "_model", "_out", "_single", "_tools", "_usage")

    def __init__(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> None:
        self._model = model
        self._ident = ident
        self._out = ChunkWriter(ident, model, include_usage)
        self._single = single_tool_call
        self._usage: Usage | None = None
        # Tool calls emitted so far: the running OpenAI `index`. Counted here rather than read from Ollama's
        # `function.index` so that calls arriving on different lines can never share an index.
        self._tools = 0
        self._done = False

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def feed(self, event: UpstreamEvent) -> Sequence[bytes]:
        obj = json_object(event.data, "Ollama sent a stream line")
        err = obj.get("error")
        if err is not None:
            # docs/api/errors.mdx: "If an error occurs mid-stream, the error will be returned as an object in
            # the application/x-ndjson format with an `error` property" -- the HTTP status is already 200.
            raise UpstreamError(f"Ollama stream error: {err}", upstream_status=502)
        if self._done:
            return ()
        if self._out.response_model is None:
            self._out.response_model = _model(obj, self._model)
        content, calls = _message(obj)
        if self._single:
            calls = _first_call(calls, already=self._tools)
        out: list[bytes] = []
        if content or calls:
            deltas = []
            for raw in calls:
                tc = _call(raw, self._tools, self._ident)
                fn = oa.ToolCallFunctionDelta(name=tc.function.name, arguments=tc.function.arguments)
                deltas.append(oa.ToolCallDelta(index=self._tools, id=tc.id, type="function", function=fn))
                self._tools += 1
            out.append(self._out.chunk(oa.Delta(content=content or None, tool_calls=deltas or None)))
        if obj.get("done") is True:
            self._done = True
            self._usage = _usage(obj)
            out.append(self._out.chunk(oa.Delta(), _finish(obj, self._tools > 0)))
        return out

    def finish(self) -> Sequence[bytes]:
        if not self._done or self._usage is None:
            raise UpstreamError("Ollama stream ended before its final `done` line", upstream_status=502)
        return self._out.usage_tail(self._usage)


# ---- adapter ---------------------------------------------------------------------------------------------


class OllamaAdapter:
    framing = Framing.NDJSON

    def __init__(self, keep_alive: str | None = None) -> None:
        self._keep_alive = _keep_alive(keep_alive) if keep_alive else None

    def encode_chat(self, chat: ChatInput, *, model: str, stream: bool) -> UpstreamRequest:
        req = chat.request
        if req.n is not None and req.n > 1:
            raise InvalidRequest("Ollama generates one choice per request; n must be 1", param="n")
        # docs/api.md: streaming is on by default ("can be disabled using `"stream": false`"): always say.
        body: dict[str, Any] = {"model": model, "messages": _messages(req.messages), "stream": stream}
        # Ollama has no tool_choice. "none" is honoured by not offering tools, and a named function by offering
        # only that tool (the model may still answer without calling it). "required" cannot be enforced: the
        # tools are offered and the model decides, as with "auto".
        if req.tools and req.tool_choice != "none":
            tools = _tools(req.tools)
            choice = req.tool_choice
            if isinstance(choice, oa.NamedToolChoice):
                tools = [t for t in tools if t["function"]["name"] == choice.function.name]
                if not tools:
                    raise InvalidRequest(
                        f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
                    )
            body["tools"] = tools
        if req.response_format is not None:
            fmt = _format(req.response_format)
            if fmt is not None:
                body["format"] = fmt
        opts = _options(req)
        if opts:
            body["options"] = opts
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        return UpstreamRequest("/api/chat", orjson.dumps(body), _JSON)

    def decode_chat(
        self, body: bytes, *, model: str, ident: StreamIdentity, single_tool_call: bool = False
    ) -> Completion:
        obj = json_object(body, "Ollama sent a body")
        if "error" in obj:
            raise UpstreamError(f"Ollama error: {obj['error']}", upstream_status=502)
        content, raw_calls = _message(obj)
        if single_tool_call:
            raw_calls = _first_call(raw_calls)
        calls = [_call(raw, i, ident) for i, raw in enumerate(raw_calls)]
        finish = _finish(obj, bool(calls))
        return completion(ident, _model(obj, model), text=content, tool_calls=calls, finish=finish, usage=_usage(obj))

    def stream_decoder(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> StreamDecoder:
        return OllamaStreamDecoder(
            model=model, include_usage=include_usage, ident=ident, single_tool_call=single_tool_call
        )

    def decode_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        # docs/api/errors.mdx: errors are `{"error": "..."}` with the HTTP status (400, 404 missing model,
        # 429, 500, 502 for an unreachable cloud model).
        message = f"Ollama returned HTTP {status}"
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            message = parsed["error"]
        elif body.strip() and parsed is None:
            message = f"{message}: {body[:200].decode('utf-8', 'replace').strip()}"
        return UpstreamError(message, upstream_status=status, retry_after=parse_retry_after(headers))

    def encode_embeddings(self, emb: EmbeddingsInput, *, model: str) -> UpstreamRequest:
        inp = emb.request.input
        # api/types.go EmbedRequest.Input: a string or a list of strings; token ids cannot be sent.
        if not isinstance(inp, str) and not all(isinstance(x, str) for x in inp):
            raise InvalidRequest("Ollama embeds text only; token-id input is not supported", param="input")
        body: dict[str, Any] = {"model": model, "input": inp}
        if emb.request.dimensions is not None:
            body["dimensions"] = emb.request.dimensions
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        return UpstreamRequest("/api/embed", orjson.dumps(body), _JSON)

    def decode_embeddings(self, body: bytes, *, model: str, encoding_format: str) -> EmbeddingsResult:
        obj = json_object(body, "Ollama sent a body")
        vectors = obj.get("embeddings")
        if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
            raise UpstreamError("Ollama sent a body without an `embeddings` list", upstream_status=502)
        # Ollama's vectors are float32 (api/types.go `[][]float32`): base64 float32 loses nothing.
        data = [embedding(i, vec, encoding_format, provider="Ollama") for i, vec in enumerate(vectors)]
        usage = Usage(prompt_tokens=_count(obj, "prompt_eval_count"))
        rmodel = _model(obj, model)
        out = EmbeddingResponse(data=data, model=rmodel, usage=EmbeddingUsage(usage.prompt_tokens, usage.prompt_tokens))
        return EmbeddingsResult(oa.encode(out), usage, rmodel)

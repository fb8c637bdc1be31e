"""``FakeOllama``: Ollama's native REST API (docs/api.md, server/routes.go in github.com/ollama/ollama) on a real
local HTTP server: ``POST /api/chat``, ``POST /api/embed``, ``GET /api/tags``, ``POST /api/show``,
``GET /api/version`` and ``GET /`` ("Ollama is running").

Chat streams NDJSON (``application/x-ndjson``) unless the body says ``"stream": false`` — streaming is the default.
A stream is one JSON object per line::

    {"model":"llama3.2","created_at":"2025-07-07T20:22:19.184789Z","message":{"role":"assistant","content":"Echo:"},"done":false}
    {"model":"llama3.2","created_at":"…","message":{"role":"assistant","content":" hi"},"done":false}
    {"model":"llama3.2","created_at":"…","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",
     "total_duration":…,"load_duration":…,"prompt_eval_count":1,"prompt_eval_duration":…,"eval_count":2,"eval_duration":…}

Tool calls arrive whole, one call per chunk, with ``arguments`` as a JSON object and ``done_reason`` staying
``"stop"``. Errors are ``{"error": "..."}``; mid-stream, an ``{"error": ...}`` line (docs/api/errors.mdx).
Durations are nanoseconds and deterministic here: load 1 ms, prompt eval 1 ms/token, eval 2 ms/token,
total = their sum + 0.5 ms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes import text
from tests.fakes.base import FakeUpstream
from tests.fakes.faults import Fault

DEFAULT_MODELS = frozenset({"llama3:8b", "llama3.2", "nomic-embed-text", "qwen3"})
# Families whose models "think" (Capabilities() contains "thinking"): ChatHandler then defaults `think` to true.
THINKING_FAMILIES = ("qwen3", "deepseek-r1", "gpt-oss")
_B64 = re.compile(r"[A-Za-z0-9+/=]")
# server/routes.go (Chat/Embed/Show handlers): fmt.Sprintf("model '%s' not found", req.Model), status 404. Older
# servers, and the scheduler path today, say `model "x" not found, try pulling it first` — don't match on the text.
MODEL_NOT_FOUND = "model '{}' not found"


def normalize(name: str) -> str:
    """``llama3.2`` and ``llama3.2:latest`` are the same model (docs/api.md: the tag defaults to ``latest``)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def rfc3339_now() -> str:
    """Go's time.Time JSON form (RFC 3339, nanosecond precision, trailing zeros trimmed), in UTC."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return stamp + "Z"


def _go_base64_error(value: str) -> str | None:
    """Images are Go ``[]byte`` fields, so JSON binding base64-decodes them; a URL fails like this."""
    cleaned = value.replace("\r", "").replace("\n", "")
    for i, ch in enumerate(cleaned):
        if not _B64.match(ch):
            return f"illegal base64 data at input byte {i}"
    try:
        base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {len(cleaned)}"
    return None


class FakeOllama(FakeUpstream):
    """``with FakeOllama() as fake: ollama.Client(host=fake.url)``. Models are matched tag-insensitively
    (``llama3.2`` == ``llama3.2:latest``); names containing "embed" are embedding-only."""

    stream_content_type = "application/x-ndjson"
    json_content_type = "application/json; charset=utf-8"

    def __init__(
        self,
        *,
        models: Iterable[str] = DEFAULT_MODELS,
        version: str = "0.12.6",
        embedding_dim: int = 768,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models = frozenset(normalize(m) for m in models)
        self.version = version
        self.embedding_dim = embedding_dim
        self.api_key = api_key
        super().__init__(host=host, port=port)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self._root)
        router.add_post("/api/chat", self._chat)
        router.add_post("/api/embed", self._embed)
        router.add_get("/api/tags", self._tags)
        router.add_post("/api/show", self._show)
        router.add_get("/api/version", self._version)
        router.add_route("*", "/{tail:.*}", self._unknown)

    # -- provider error shapes ---------------------------------------------------------------------------------

    def error_body(self, status: int, fault: Fault | None, message: str | None = None) -> Any:
        default = "the model failed to generate a response" if status >= 500 else f"HTTP {status}"
        return {"error": message or (fault.message if fault else None) or default}

    def stream_error_frame(self, message: str | None) -> bytes:
        return self.encode_json({"error": message or "an error was encountered while running the model"}) + b"\n"

    def _error(self, status: int, message: str) -> web.Response:
        return self._json({"error": message}, status)

    def _json(self, body: Any, status: int = 200) -> web.Response:
        # gin's c.JSON: compact JSON, "application/json; charset=utf-8"
        return web.Response(
            status=status, body=self.encode_json(body), content_type="application/json", charset="utf-8"
        )

    def _gate(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """JSON binding and the ``model`` field, checked in this order by the real handlers."""
        rec = self.record(request)
        if not rec.body:
            return {}, self._error(400, "missing request body")
        if not isinstance(rec.json, dict):
            return {}, self._error(400, "invalid character looking for beginning of value")
        body: dict[str, Any] = rec.json
        if not isinstance(body.get("model"), str) or not body["model"]:
            return body, self._error(400, "model is required")
        return body, None

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        # A local server checks no key; behind a proxy or on ollama.com a Bearer key is required.
        if self.api_key is not None and request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return self._error(401, "unauthorized")
        return None

    def _known(self, name: str) -> bool:
        return normalize(name) in self.models

    # -- chat --------------------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, bad = self._gate(request)
        if bad is not None:
            return bad
        messages = body.get("messages") or []
        for msg in messages:
            for image in msg.get("images") or () if isinstance(msg, Mapping) else ():
                err = _go_base64_error(image) if isinstance(image, str) else "json: cannot unmarshal into []byte"
                if err:
                    return self._error(400, err)
        model: str = body["model"]
        if not self._known(model):
            return self._error(404, MODEL_NOT_FOUND.format(model))
        if "embed" in model:
            return self._error(400, f'"{model}" does not support chat')
        think = body.get("think")
        thinks = normalize(model).startswith(THINKING_FAMILIES)
        if think not in (None, False) and not thinks:
            return self._error(400, f'"{model}" does not support thinking')
        if not messages:  # "If the messages array is empty, the model will be loaded into memory."
            return self._json(self._head(model, {"role": "assistant", "content": ""}, True, "load"))
        reply = _plan(body, thinking=thinks and think is not False)
        stream = body.get("stream") is not False  # docs/api.md: streaming unless {"stream": false}
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": reply["content"]}
            if reply["thinking"]:
                message["thinking"] = reply["thinking"]
            if reply["tool_calls"]:
                message["tool_calls"] = reply["tool_calls"]
            final = self._head(model, message, True, reply["done_reason"]) | reply["metrics"]
            return await self.send_json(request, final)
        frames = [
            self._head(model, {"role": "assistant", "content": "", "thinking": piece}, False)
            for piece in text.split_pieces(reply["thinking"])
        ]
        frames += [
            self._head(model, {"role": "assistant", "content": p}, False) for p in text.split_pieces(reply["content"])
        ]
        frames += [
            self._head(model, {"role": "assistant", "content": "", "tool_calls": [c]}, False)
            for c in reply["tool_calls"]
        ]
        frames.append(
            self._head(model, {"role": "assistant", "content": ""}, True, reply["done_reason"]) | reply["metrics"]
        )
        return await self.send_stream(request, [self.encode_json(f) + b"\n" for f in frames])

    @staticmethod
    def _head(model: str, message: dict[str, Any], done: bool, done_reason: str | None = None) -> dict[str, Any]:
        out = {"model": model, "created_at": rfc3339_now(), "message": message, "done": done}
        if done_reason:
            out["done_reason"] = done_reason
        return out

    # -- embeddings --------------------------------------------------------------------------------------------

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body, bad = self._gate(request)
        if bad is not None:
            return bad
        model = body["model"]
        if not self._known(model):
            return self._error(404, MODEL_NOT_FOUND.format(model))
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return self._error(400, "invalid input type")
        if not inputs:
            return await self.send_json(request, {"model": model, "embeddings": []})
        dim = body.get("dimensions") or self.embedding_dim
        tokens = sum(text.count_tokens(i) for i in inputs)
        return await self.send_json(
            request,
            {
                "model": model,
                "embeddings": [text.embedding_vector(i, int(dim)) for i in inputs],
                "total_duration": 1_500_000 + 1_000_000 * tokens,
                "load_duration": 1_000_000,
                **({"prompt_eval_count": tokens} if tokens else {}),
            },
        )

    # -- catalogue ---------------------------------------------------------------------------------------------

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        return await self.send_json(request, {"models": [_model_entry(m) for m in sorted(self.models)]})

    async def _show(self, request: web.Request) -> web.StreamResponse:
        body, bad = self._gate(request)
        if bad is not None:
            return bad
        name = body["model"]
        if not self._known(name):
            return self._error(404, MODEL_NOT_FOUND.format(name))
        entry = _model_entry(normalize(name))
        family = entry["details"]["family"]
        caps = ["embedding"] if "embed" in name else ["completion", "tools"]
        if normalize(name).startswith(THINKING_FAMILIES):
            caps.append("thinking")
        return await self.send_json(
            request,
            {
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {entry["name"]}\n',
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": entry["details"],
                "model_info": {"general.architecture": family, f"{family}.context_length": 8192},
                "capabilities": caps,
                "modified_at": entry["modified_at"],
            },
        )

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return await self.send_json(request, {"version": self.version})

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="404 page not found")  # gin's default 404


def _model_entry(name: str) -> dict[str, Any]:
    base, _, tag = name.partition(":")
    family = "nomic-bert" if "embed" in base else re.sub(r"[\d.]+$", "", base.split("/")[-1]) or base
    size = re.fullmatch(r"(\d+(?:\.\d+)?)b", tag)
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-05-04T17:37:44.706015396-07:00",
        "size": 2_019_393_189,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": f"{float(size.group(1)):.1f}B" if size else "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def _plan(body: Mapping[str, Any], *, thinking: bool) -> dict[str, Any]:
    """The fake model's answer: content/thinking text or tool calls, done_reason, metrics."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
    last = messages[-1] if messages else {}
    options: Mapping[str, Any] = body["options"] if isinstance(body.get("options"), Mapping) else {}
    user_text = next((text.message_text(m) for m in reversed(messages) if m.get("role") in ("user", "tool")), "")
    out: dict[str, Any] = {"content": "", "thinking": "", "tool_calls": [], "done_reason": "stop"}
    completion = 0
    if thinking:
        out["thinking"] = " ".join(["Thinking", "about:", *user_text.split()])
        completion += text.count_tokens(out["thinking"])
    tools = body.get("tools") or []
    calls = text.plan_tool_calls(tools, user_text) if tools and last.get("role") == "user" else []
    if calls:
        out["tool_calls"] = [
            {
                "id": "call_" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)),
                "function": {"index": i, "name": c.name, "arguments": c.arguments},
            }
            for i, c in enumerate(calls)
        ]
        completion += text.tool_call_tokens(calls)
    else:
        fmt = body.get("format")
        full = (
            text.json_reply(user_text, None)
            if fmt == "json"
            else text.json_reply(user_text, fmt)
            if isinstance(fmt, Mapping)
            else text.echo_text(user_text)
        )
        stop = options.get("stop")
        stops = (
            [stop]
            if isinstance(stop, str)
            else [s for s in stop if isinstance(s, str)]
            if isinstance(stop, list)
            else []
        )
        limit = options.get("num_predict")
        reply = text.limit_reply(
            full,
            stop=stops,
            max_tokens=limit if isinstance(limit, int) and limit >= 0 else None,  # -1: no limit
        )
        out["content"], out["done_reason"] = reply.content, reply.finish
        completion += reply.tokens
    prompt = text.prompt_tokens(messages)
    metrics = {
        "total_duration": 1_500_000 + 1_000_000 * prompt + 2_000_000 * completion,
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 1_000_000 * prompt,
        "eval_count": completion,
        "eval_duration": 2_000_000 * completion,
    }
    out["metrics"] = {k: v for k, v in metrics.items() if v}  # Go's omitempty drops zero metrics
    return out

"""OpenAI: near-identity translation. Unknown request fields pass through untouched; responses are served as the
upstream sent them, except that the gateway always asks for stream usage (metering) and strips the usage chunk
again when the client did not ask for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from aigw.errors import UpstreamError
from aigw.providers.base import (
    ChatInput,
    Completion,
    EmbeddingsInput,
    EmbeddingsResult,
    Framing,
    StreamIdentity,
    UpstreamEvent,
    UpstreamRequest,
    parse_retry_after,
)
from aigw.schema.usage import Usage

_JSON = {"content-type": "application/json"}


def usage_from_openai(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        cached_prompt_tokens=int(cached or 0),
    )


def _substantive(choices: Any) -> bool:
    """Does this chunk carry anything but the opening role: content, a tool call, a refusal, a finish, or any other
    non-empty delta field (reasoning text from OpenAI-compatible servers, audio), so none of those is held back?"""
    for c in choices:
        if not isinstance(c, dict):
            continue
        if c.get("finish_reason"):
            return True
        d = c.get("delta")
        if isinstance(d, dict) and any(v for k, v in d.items() if k != "role"):
            return True
    return False


class OpenAIStreamDecoder:
    __slots__ = ("_done", "_finish_reason", "_held", "_include_usage", "_model", "_started", "_usage")

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._usage: Usage | None = None
        self._model: str | None = None
        self._finish_reason: str | None = None
        self._done = False
        # OpenAI opens with {"role": "assistant", "content": ""}. Held back until something real follows, so that
        # an error right after it still comes before the commit point (ADR 0003) and can fall back.
        self._started = False
        self._held: list[bytes] = []

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @property
    def response_model(self) -> str | None:
        return self._model

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason

    def feed(self, event: UpstreamEvent) -> Sequence[bytes]:
        data = event.data
        if self._done:  # nothing follows [DONE] in the stream the client reads
            return ()
        if data == b"[DONE]":
            self._done = True
            return ()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent a stream event that is not JSON", upstream_status=502) from None
        if not isinstance(chunk, dict):
            raise UpstreamError("upstream sent a stream event that is not a JSON object", upstream_status=502)
        err = chunk.get("error")
        if err is not None:
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError(f"upstream stream error: {msg}", upstream_status=502)
        if self._model is None:
            m = chunk.get("model")
            self._model = m if isinstance(m, str) else None
        choices = chunk.get("choices")
        if choices:
            for c in choices:
                fr = c.get("finish_reason") if isinstance(c, dict) else None
                if fr:
                    self._finish_reason = fr
        u = chunk.get("usage")
        if u:
            self._usage = usage_from_openai(u)
            if not choices and not self._include_usage:
                return ()  # the usage chunk the gateway asked for on its own account
        if self._started:
            return (data,)
        if choices and not _substantive(choices):
            self._held.append(data)
            return ()
        self._started = True
        held, self._held = self._held, []
        return (*held, data)

    def finish(self) -> Sequence[bytes]:
        if not self._done:
            raise UpstreamError("upstream stream ended before [DONE]", upstream_status=502)
        held, self._held = self._held, []
        return held


def decode_openai_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    message, etype, code, param = f"upstream returned HTTP {status}", None, None, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):  # Ollama's /v1 and some compatible servers
            message = err
    return UpstreamError(
        message,
        upstream_status=status,
        retry_after=parse_retry_after(headers),
        upstream_type=etype,
        param=param,
        code=code,
    )


class OpenAIAdapter:
    framing = Framing.SSE

    def encode_chat(self, chat: ChatInput, *, model: str, stream: bool) -> UpstreamRequest:
        body = dict(chat.raw)
        body["model"] = model
        if stream:
            opts = body.get("stream_options")
            body["stream_options"] = (
                {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
            )
        return UpstreamRequest("/chat/completions", orjson.dumps(body), _JSON)

    def decode_chat(
        self, body: bytes, *, model: str, ident: StreamIdentity, single_tool_call: bool = False
    ) -> Completion:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream returned a body that is not JSON", upstream_status=502) from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
            raise UpstreamError("upstream returned a body that is not a chat completion", upstream_status=502)
        choices = parsed["choices"]
        finish = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
        rmodel = parsed.get("model")
        return Completion(
            body=body,
            usage=usage_from_openai(parsed.get("usage")),
            response_model=rmodel if isinstance(rmodel, str) else model,
            finish_reason=finish,
        )

    def stream_decoder(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(include_usage)

    def decode_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return decode_openai_error(status, body, headers)

    def encode_embeddings(self, emb: EmbeddingsInput, *, model: str) -> UpstreamRequest:
        body = dict(emb.raw)
        body["model"] = model
        return UpstreamRequest("/embeddings", orjson.dumps(body), _JSON)

    def decode_embeddings(self, body: bytes, *, model: str, encoding_format: str) -> EmbeddingsResult:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream returned a body that is not JSON", upstream_status=502) from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list):
            raise UpstreamError("upstream returned a body that is not an embedding list", upstream_status=502)
        u = parsed.get("usage")
        usage = Usage(prompt_tokens=int(u.get("prompt_tokens") or 0)) if isinstance(u, dict) else None
        rmodel = parsed.get("model")
        return EmbeddingsResult(body, usage, rmodel if isinstance(rmodel, str) else model)

"""BedrockAdapter: OpenAI Chat Completions ⇄ Bedrock Converse / ConverseStream, embeddings through InvokeModel.

Pure translation (ADR 0002): no I/O, no clock. Signing is :class:`aigw.providers.sigv4.SigV4Signer`'s job and the
binary stream framing :class:`aigw.providers.eventstream.EventStreamParser`'s. The model id goes into the path
percent-encoded as boto3 sends it (``quote(model_id, safe="")``: ``:`` → ``%3A``, an ARN's ``/`` → ``%2F``), and
that exact path must reach Bedrock -- SigV4 signs the path as sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

import msgspec
import orjson

from aigw.errors import UpstreamError
from aigw.providers.base import (
    ChatInput,
    Completion,
    EmbeddingsInput,
    EmbeddingsResult,
    Framing,
    StreamDecoder,
    StreamIdentity,
    UpstreamRequest,
    parse_retry_after,
)
from aigw.providers.bedrock import embeddings, request, wire
from aigw.providers.bedrock.stream import BedrockStreamDecoder
from aigw.providers.convert import arguments_json
from aigw.providers.output import completion
from aigw.schema import chat as oa

_JSON = {"content-type": "application/json"}
_RESPONSE = wire.decoder(wire.ConverseResponse)


def default_endpoint(region: str) -> str:
    """Bedrock Runtime's regional endpoint (``BedrockProvider.endpoint_url`` overrides it): AWS's endpoint rules put
    the China regions under ``amazonaws.com.cn``."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://bedrock-runtime.{region}.{suffix}"


def model_path(model: str, operation: str) -> str:
    return f"/model/{quote(model, safe='')}/{operation}"


class BedrockAdapter:
    framing = Framing.AWS_EVENTSTREAM

    def __init__(self, *, default_max_tokens: int | None = None) -> None:
        # Converse's maxTokens defaults to "the maximum allowed value for the model" when left out; the configured
        # default keeps a request that names no limit from running (and costing) up to that maximum.
        self._default_max_tokens = default_max_tokens

    # ---- chat ------------------------------------------------------------------------------------------------

    def encode_chat(self, chat: ChatInput, *, model: str, stream: bool) -> UpstreamRequest:
        body = request.converse_body(chat.request, default_max_tokens=self._default_max_tokens)
        path = model_path(model, "converse-stream" if stream else "converse")
        return UpstreamRequest(path, orjson.dumps(body), _JSON)

    def decode_chat(
        self, body: bytes, *, model: str, ident: StreamIdentity, single_tool_call: bool = False
    ) -> Completion:
        try:
            resp = _RESPONSE.decode(body)
        except msgspec.DecodeError:
            raise UpstreamError("Bedrock sent a body that is not a Converse response", upstream_status=502) from None
        blocks = resp.output.message.content if resp.output.message is not None else []
        texts = [b.text for b in blocks if b.text]
        calls = [
            oa.ResponseToolCall(
                id=b.tool_use.tool_use_id,
                # toolUse.input is a JSON document (an object for every tool); OpenAI wants it as a JSON string.
                function=oa.FunctionCall(name=b.tool_use.name, arguments=arguments_json(b.tool_use.input)),
            )
            for b in blocks
            # A call to the no-tools placeholder is dropped: the client offered no tools (see request.py).
            if b.tool_use is not None and b.tool_use.name != request.NO_TOOLS_PLACEHOLDER
        ]
        if single_tool_call:
            # parallel_tool_calls: false, which Converse cannot be told (see request.py): keep the first call only.
            # Usage stays as reported: the upstream did generate (and bill) the dropped calls' tokens.
            del calls[1:]
        # Text blocks are joined without a separator, exactly as the same answer streams.
        text = "".join(texts)
        finish = wire.finish_reason(resp.stop_reason, tool_calls=bool(calls))
        usage = (resp.usage or wire.TokenUsage()).normalized()
        # Converse's answer does not name a model: report the one asked for.
        return completion(ident, model, text=text, tool_calls=calls, finish=finish, usage=usage)

    def stream_decoder(
        self, *, model: str, include_usage: bool, ident: StreamIdentity, single_tool_call: bool = False
    ) -> StreamDecoder:
        return BedrockStreamDecoder(
            model=model, include_usage=include_usage, ident=ident, single_tool_call=single_tool_call
        )

    def decode_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        # Bedrock's errors: HTTP status + `x-amzn-errortype: ValidationException:http://internal.amazon.com/coral/
        # com.amazon.bedrock/` + a JSON body {"message": "..."} ({"Message": ...} from some front ends).
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        message = ""
        if isinstance(parsed, dict):
            raw = parsed.get("message", parsed.get("Message"))
            message = raw if isinstance(raw, str) else ""
        elif body.strip():
            message = body[:200].decode("utf-8", "replace").strip()
        kind = wire.error_type(_header(headers, "x-amzn-errortype"), parsed)
        if kind is None:
            text = f"Bedrock returned HTTP {status}" + (f": {message}" if message else "")
            return UpstreamError(text, upstream_status=status, retry_after=parse_retry_after(headers))
        return wire.exception_error(kind, message, status=status, retry_after=parse_retry_after(headers))

    # ---- embeddings (InvokeModel) --------------------------------------------------------------------------

    def encode_embeddings(self, emb: EmbeddingsInput, *, model: str) -> UpstreamRequest:
        return embeddings.encode(emb, path=model_path(model, "invoke"), model=model)

    def decode_embeddings(self, body: bytes, *, model: str, encoding_format: str) -> EmbeddingsResult:
        return embeddings.decode_batch([body], model=model, encoding_format=encoding_format)

    def encode_embeddings_batch(self, emb: EmbeddingsInput, *, model: str) -> list[UpstreamRequest]:
        """Every request an embeddings call needs (Titan: one per input text), for a transport that fans out."""
        return embeddings.encode_batch(emb, path=model_path(model, "invoke"), model=model)

    def decode_embeddings_batch(self, bodies: Sequence[bytes], *, model: str, encoding_format: str) -> EmbeddingsResult:
        """The answers to :meth:`encode_embeddings_batch`'s requests, in the same order, as one OpenAI response."""
        return embeddings.decode_batch(bodies, model=model, encoding_format=encoding_format)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive (aiohttp's CIMultiDictProxy is not)
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value

"""Embeddings through Bedrock's InvokeModel (``POST /model/{modelId}/invoke``): Amazon Titan text embeddings and
Cohere Embed. Converse has no embeddings operation; the body is each model family's own JSON.

* Titan Text Embeddings (``amazon.titan-embed-text-v1``, ``amazon.titan-embed-text-v2:0``, ...): one text per
  call. Request ``{"inputText": str}`` (V2 also ``dimensions`` 256/512/1024 and ``normalize``, default true);
  response ``{"embedding": [float...], "inputTextTokenCount": int}`` (Bedrock user guide, "Amazon Titan Embeddings
  G1 - Text" / V2). An OpenAI ``input`` list therefore needs one call per text: :func:`encode_batch` returns those
  requests and :func:`decode_batch` joins their answers, for a transport that fans out; the single-request
  :func:`encode` accepts one text only and answers a longer list with a 400.
* Cohere Embed (model ids containing ``cohere.embed``): ``{"texts": [...], "input_type": "search_document"}``,
  answer ``{"embeddings": [[...]], "response_type": "embeddings_floats", ...}`` -- lists in one call. Bedrock
  reports Cohere's token count only in the ``X-Amzn-Bedrock-Input-Token-Count`` response header, which the
  decoding seam does not receive: its usage is 0 unless the body carries ``meta.billed_units.input_tokens``.

``normalize`` is never sent: Titan V2 normalizes by default (as OpenAI's embeddings are) and V1 rejects the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from aigw.errors import InvalidRequest, UpstreamError
from aigw.providers.base import EmbeddingsInput, EmbeddingsResult, UpstreamRequest
from aigw.providers.convert import embedding, json_object
from aigw.schema import chat as oa
from aigw.schema.embeddings import Embedding, EmbeddingResponse, EmbeddingUsage
from aigw.schema.usage import Usage

_JSON = {"content-type": "application/json", "accept": "application/json"}
# "input_type" is required by Cohere Embed v3; OpenAI's API has no such notion. Documents are what an embeddings
# endpoint mostly sees (indexing); a query-side caller can use a Titan model, which is symmetric.
COHERE_INPUT_TYPE = "search_document"


def is_cohere(model: str) -> bool:
    return "cohere.embed" in model


def _texts(emb: EmbeddingsInput) -> list[str]:
    inp = emb.request.input
    texts = [inp] if isinstance(inp, str) else inp
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("Bedrock embeds text only; token-id input is not supported", param="input")
    return [t for t in texts if isinstance(t, str)]


def _titan_body(text: str, dimensions: int | None) -> bytes:
    body: dict[str, Any] = {"inputText": text}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return orjson.dumps(body)


def encode_batch(emb: EmbeddingsInput, *, path: str, model: str) -> list[UpstreamRequest]:
    texts = _texts(emb)
    if is_cohere(model):
        body = {"texts": texts, "input_type": COHERE_INPUT_TYPE}
        return [UpstreamRequest(path, orjson.dumps(body), _JSON)]
    return [UpstreamRequest(path, _titan_body(t, emb.request.dimensions), _JSON) for t in texts]


def encode(emb: EmbeddingsInput, *, path: str, model: str) -> UpstreamRequest:
    requests = encode_batch(emb, path=path, model=model)
    if len(requests) != 1:
        raise InvalidRequest(
            f"Titan embeds one text per request: send `input` as a single string (got {len(requests)} texts)",
            param="input",
        )
    return requests[0]


def _vectors(obj: dict[str, Any]) -> tuple[list[list[float]], int]:
    """The vectors of one InvokeModel answer and its input token count."""
    vectors: Any
    if "embedding" in obj:  # Titan
        vectors, count = [obj.get("embedding")], obj.get("inputTextTokenCount")
    else:  # Cohere: a list of vectors, or {"float": [...]} when embedding_types was given
        raw = obj.get("embeddings")
        vectors = raw.get("float") if isinstance(raw, dict) else raw
        meta = obj.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, dict) else None
        count = billed.get("input_tokens") if isinstance(billed, dict) else 0
    if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
        raise UpstreamError("Bedrock sent an embeddings body without vectors", upstream_status=502)
    return vectors, count if isinstance(count, int) else 0


def decode_batch(bodies: Sequence[bytes], *, model: str, encoding_format: str) -> EmbeddingsResult:
    data: list[Embedding] = []
    tokens = 0
    for body in bodies:
        vectors, count = _vectors(json_object(body, "Bedrock sent an embeddings body"))
        tokens += count
        data.extend(embedding(len(data), vec, encoding_format, provider="Bedrock") for vec in vectors)
    usage = Usage(prompt_tokens=tokens)
    out = EmbeddingResponse(data=data, model=model, usage=EmbeddingUsage(tokens, tokens))
    return EmbeddingsResult(oa.encode(out), usage, model)

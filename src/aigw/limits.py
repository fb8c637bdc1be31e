"""Applying tenant rate limits to a request: the token estimate, the x-ratelimit-* headers, the 429.

Estimate for TPM (reserved before the call, settled with the upstream's reported usage after it): prompt ≈ one token
per 4 characters of message text (tools and images add their JSON size / 4), plus the request's output limit
(`max_completion_tokens`, else `max_tokens`, else `rate_limits.estimate_output_tokens`). Cheap and deliberately
rough: the settle corrects it, so it only decides whether a request may start.
"""

from __future__ import annotations

import math

import orjson

from aigw.errors import RateLimited
from aigw.ratelimit import Decision, Verdict, retry_after_header
from aigw.schema.chat import ChatCompletionRequest
from aigw.schema.embeddings import EmbeddingRequest


def _text_len(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(getattr(p, "text", "") or "") for p in content)
    return 0


def estimate_chat(req: ChatCompletionRequest, default_output: int) -> int:
    chars = sum(_text_len(m.content) for m in req.messages)
    if req.tools:
        chars += sum(len(orjson.dumps(t.function.parameters or {})) for t in req.tools)
    out = req.output_limit if req.output_limit is not None else default_output
    return chars // 4 + 1 + out


def estimate_embeddings(req: EmbeddingRequest) -> int:
    inp = req.input
    if isinstance(inp, str):
        return len(inp) // 4 + 1
    return sum(len(x) // 4 + 1 if isinstance(x, str) else (len(x) if isinstance(x, list) else 1) for x in inp)


def _dim(headers: dict[str, str], name: str, d: Decision | None, refused: bool) -> None:
    if d is None:
        return
    headers[f"x-ratelimit-limit-{name}"] = str(d.limit)
    # The contract: remaining is 0 on the 429, whichever dimension refused.
    headers[f"x-ratelimit-remaining-{name}"] = "0" if refused else str(d.remaining)
    headers[f"x-ratelimit-reset-{name}"] = f"{math.ceil(d.reset_s)}s"


def headers_for(v: Verdict) -> dict[str, str]:
    headers: dict[str, str] = {}
    _dim(headers, "requests", v.requests, not v.allowed)
    _dim(headers, "tokens", v.tokens, not v.allowed)
    return headers


def refusal(v: Verdict, headers: dict[str, str]) -> RateLimited:
    which = [n for n, d in (("requests", v.requests), ("tokens", v.tokens)) if d is not None and not d.allowed]
    what = v.reason or (" and ".join(f"{w}/min" for w in which) + " limit reached" if which else "rate limited")
    return RateLimited(
        f"Rate limit exceeded for this tenant: {what}. Retry after the Retry-After seconds.",
        headers={**headers, "retry-after": str(retry_after_header(v.retry_after_s))},
    )

"""Response cache rules (pure): which requests may be cached, and the key an answer is stored under.

A request is cacheable when it is deterministic: ``temperature`` exactly 0 and ``n`` absent or 1 (issue 6).
The client steers with ``Cache-Control``: ``no-store`` neither reads nor writes, ``no-cache`` skips the read but
refreshes the entry, ``max-age=N`` overrides the entry's TTL (``max-age=0`` behaves like ``no-cache``).

The key is a sha256 over a canonical serialization (orjson, sorted keys, no whitespace) of the scope (tenant id, or
``shared:<alias>``), the resolved targets in order, and the raw request minus fields that cannot change the answer,
so key order and whitespace in the body do not matter while anything that shapes the answer does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from aigw.schema.chat import ChatCompletionRequest

__all__ = ["IGNORED_FIELDS", "CacheDirective", "CacheMode", "cache_key", "cacheable", "parse_cache_control"]

CacheMode = Literal["read_write", "refresh", "bypass"]

KEY_VERSION = 1  # bump when the key's inputs change, so old entries are simply never found again

# Request fields left out of the key because they do not change the answer's content:
IGNORED_FIELDS = frozenset(
    {
        "stream",  # delivery only: a non-streamed entry serves a streamed request and vice versa
        "stream_options",  # include_usage is served from the stored usage on replay
        "user",  # end-user id for the provider's abuse tracking; the tenant scope already isolates
        "safety_identifier",  # the newer name for `user` (abuse tracking only)
        "metadata",  # tags for OpenAI's stored-completions dashboard
        "store",  # whether OpenAI keeps the completion for distillation/evals
        "service_tier",  # processing priority/latency tier; same model, same sampling
        "prompt_cache_key",  # a provider-side prefix-cache routing hint
    }
)


@dataclass(frozen=True, slots=True)
class CacheDirective:
    """What to do with the cache for one request; ``ttl_s`` is a per-request override (None: the configured TTL)."""

    mode: CacheMode
    ttl_s: int | None = None


@dataclass(frozen=True, slots=True)
class _CacheControl:
    no_store: bool = False
    no_cache: bool = False
    max_age: int | None = None


def parse_cache_control(header: str | None) -> _CacheControl:
    """The request directives we honour; unknown or malformed ones are ignored (never an error)."""
    no_store = no_cache = False
    max_age: int | None = None
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-store":
            no_store = True
        elif name == "no-cache":
            no_cache = True
        elif name == "max-age":
            value = value.strip().strip('"')
            if value.isdigit():  # digits only: no sign, no fraction (RFC 9111 delta-seconds)
                max_age = int(value)
    return _CacheControl(no_store, no_cache, max_age)


def is_deterministic(req: ChatCompletionRequest) -> bool:
    return req.temperature is not None and req.temperature == 0 and req.n in (None, 1)


def cacheable(req: ChatCompletionRequest, cache_control: str | None) -> CacheDirective:
    """How the cache may serve ``req``: ``read_write`` (normal), ``refresh`` (write only), ``bypass`` (untouched)."""
    cc = parse_cache_control(cache_control)
    if cc.no_store or not is_deterministic(req):
        return CacheDirective("bypass")
    if cc.max_age == 0:  # "nothing older than 0 s": never read, and an entry with TTL 0 is pointless
        return CacheDirective("refresh")
    return CacheDirective("refresh" if cc.no_cache else "read_write", cc.max_age)


def cache_key(scope: str, targets: Sequence[str], raw: Mapping[str, Any]) -> str:
    """sha256 hex of everything that changes the answer. Top-level ``null`` fields count as absent."""
    request = {k: _number(v) for k, v in raw.items() if k not in IGNORED_FIELDS and v is not None}
    payload = {"v": KEY_VERSION, "scope": scope, "targets": list(targets), "request": request}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _number(value: Any) -> Any:
    """``0`` and ``0.0`` are one JSON number to the provider: one key for both (top-level sampling fields)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value

"""The response cache as the gateway uses it: which entry a request maps to, reading and writing entries.

Rules (what is cacheable, the key) are in ``cache.py``; the stores (in-process LRU, Redis) in ``state/``. Entries are
only ever written for a complete, successful answer. An entry holds the ``ChatCompletion`` body plus what the ledger
needs for a hit: the provider and upstream model that made it and the usage it was billed for (the saved cost).

A store never raises (Redis trouble is a miss), and neither does anything here: an entry that cannot be read back
(another version, corruption) is a miss too. A cache problem must never fail a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from aigw.cache import CacheMode, cache_key, cacheable
from aigw.config.model import AliasCache, CacheConfig
from aigw.providers.base import ChatInput, StreamIdentity
from aigw.routing import Target
from aigw.schema.usage import Usage
from aigw.state.cache_memory import CacheStore, PendingRead

__all__ = ["CachePlan", "CacheStatus", "CachedAnswer", "Lookup", "ResponseCache"]

log = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss", "bypass"]
ENTRY_VERSION = 1


@dataclass(frozen=True, slots=True)
class CachePlan:
    key: str
    mode: CacheMode  # read_write or refresh (a bypass has no plan)
    ttl_s: int


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    completion: dict[str, Any]  # the stored ChatCompletion
    provider: str  # configured provider name that produced it
    upstream_model: str
    usage: Usage  # what it was billed for when it was produced

    def body(self, ident: StreamIdentity) -> bytes:
        """The stored answer under this response's own id: every response the gateway sends has its own."""
        return orjson.dumps({**self.completion, "id": ident.id, "created": ident.created})


class Lookup:
    """A cache read under way (``ResponseCache.lookup``): a store's pending read, or a task."""

    __slots__ = ("_cache", "_pending", "_task")

    def __init__(
        self, cache: ResponseCache, pending: PendingRead | None, task: asyncio.Future[CachedAnswer | None] | None
    ) -> None:
        self._cache = cache
        self._pending = pending
        self._task = task

    async def answer(self) -> CachedAnswer | None:
        if self._pending is not None:
            return self._cache._read(await self._pending.value())
        assert self._task is not None
        return await self._task

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        elif self._task is not None:
            self._task.cancel()


class ResponseCache:
    def __init__(self, store: CacheStore, config: CacheConfig, aliases: Mapping[str, AliasCache]) -> None:
        self.store = store
        self._ttl_s = config.ttl_s
        self.aliases = aliases
        self.counts = {"hit": 0, "miss": 0, "bypass": 0, "stored": 0, "unreadable": 0}

    def plan(
        self, tenant_id: str, model: str, targets: Sequence[Target], chat: ChatInput, cache_control: str | None
    ) -> CachePlan | None:
        """The entry this request reads and/or writes, or None when the cache must not be touched."""
        alias = self.aliases.get(model)
        if alias is not None and not alias.enabled:
            return None
        directive = cacheable(chat.request, cache_control)
        if directive.mode == "bypass":
            return None
        scope = f"shared:{model}" if alias is not None and alias.shared else f"tenant:{tenant_id}"
        ttl = directive.ttl_s or (alias.ttl_s if alias is not None and alias.ttl_s else self._ttl_s)
        return CachePlan(cache_key(scope, [t.key for t in targets], chat.raw), directive.mode, ttl)

    def status(self, plan: CachePlan | None, hit: CachedAnswer | None) -> CacheStatus:
        """``x-aigw-cache``: a refresh (``no-cache``) is a bypass to the client, though it writes the entry."""
        status: CacheStatus = "hit" if hit else "miss" if plan is not None and plan.mode == "read_write" else "bypass"
        self.counts[status] += 1
        return status

    async def get(self, plan: CachePlan) -> CachedAnswer | None:
        if plan.mode != "read_write":
            return None
        return self._read(await self.store.get(plan.key))

    def lookup(self, plan: CachePlan) -> Lookup:
        """``get`` started now, to run while the caller awaits something else (the admission): without a task where
        the store can send its read at once (``CacheStore.get_soon``)."""
        pending = self.store.get_soon(plan.key) if plan.mode == "read_write" else None
        if pending is not None:
            return Lookup(self, pending, None)
        return Lookup(self, None, asyncio.ensure_future(self.get(plan)))

    def _read(self, raw: bytes | None) -> CachedAnswer | None:
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            if data.get("v") != ENTRY_VERSION:
                raise ValueError(f"entry version {data.get('v')!r}")
            p, c, cached, written = data["usage"]
            if not _replayable(data["completion"]):
                raise ValueError("the stored completion lacks what a response is made of")
            return CachedAnswer(data["completion"], data["provider"], data["model"], Usage(p, c, cached, written))
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.counts["unreadable"] += 1
            log.debug("response cache: unreadable entry treated as a miss (%s)", type(exc).__name__)
            return None

    async def put(
        self, plan: CachePlan, *, provider: str, upstream_model: str, usage: Usage, completion: bytes
    ) -> None:
        """Store a complete answer; ``completion`` is the ChatCompletion body as sent (embedded, not re-parsed)."""
        entry = orjson.dumps(
            {
                "v": ENTRY_VERSION,
                "provider": provider,
                "model": upstream_model,
                "usage": [
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_prompt_tokens,
                    usage.cache_write_tokens,
                ],
                "completion": orjson.Fragment(completion),
            }
        )
        await self.store.set(plan.key, entry, plan.ttl_s)
        self.counts["stored"] += 1


def _replayable(completion: Any) -> bool:
    """Everything ``CachedAnswer.body`` and ``replay_chunks`` read is there with its type: an entry that passes never
    fails the request it answers (one that does not is a miss)."""
    if not isinstance(completion, dict) or not isinstance(completion.get("model"), str):
        return False
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("index"), int) or "finish_reason" not in choice:
            return False
        message = choice.get("message")
        if not isinstance(message, dict):
            return False
        calls = message.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list) and all(isinstance(t, dict) and isinstance(t.get("id"), str) for t in calls)
        ):
            return False
    return True

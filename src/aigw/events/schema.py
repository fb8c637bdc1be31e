"""The usage event, version 1: one JSON object per completed request, built from its ``UsageRecord``.

Documented in docs/events.md and docs/schema/usage-event.v1.json. Adding an optional field keeps the version;
removing, renaming or retyping a field bumps ``schema_version`` (and the ``type``'s suffix).

Money is a decimal *string* with exactly 9 fractional digits, the ledger's own precision (``NUMERIC(18, 9)``),
rounded the way the ledger rounds: JSON numbers are read as binary floats by most consumers, which would lose cents
in sums.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson

from aigw.store.rollups import COST_QUANTUM  # usage_records.cost_usd is NUMERIC(18, 9)
from aigw.store.usage import UsageRecord

SCHEMA_VERSION = 1
EVENT_TYPE = "aigw.usage.v1"

# Namespace of the deterministic event ids (uuid5): the same ledger row always yields the same id.
_EVENT_NAMESPACE = uuid.UUID("6f1d8a52-3c1e-5b7a-9a0e-2f4b8c6d1e90")


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """What the outbox stores for one record: the body to send and the keys a sink needs without parsing it."""

    event_id: str
    tenant_id: str
    body: str


def money(value: Decimal | None) -> str | None:
    """``Decimal('0.0001234564')`` → ``"0.000123456"``; None stays None (price unknown, not free)."""
    if value is None:
        return None
    # format(..., "f"): str() would give "0E-9" for zero.
    return format(Decimal(value).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP), "f")


def event_id(record: UsageRecord) -> str:
    """Unique per ledger row even when a client reuses its ``x-request-id`` (the request id is echoed as sent)."""
    ts = record.created_at.astimezone(UTC).isoformat(timespec="microseconds")
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{record.tenant_id}\n{record.request_id}\n{ts}"))


def timestamp(record: UsageRecord) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: the ledger row's ``created_at``."""
    return record.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_event(record: UsageRecord, eid: str | None = None) -> dict[str, Any]:
    return {
        "type": EVENT_TYPE,
        "schema_version": SCHEMA_VERSION,
        "event_id": eid if eid is not None else event_id(record),
        "request_id": record.request_id,
        "timestamp": timestamp(record),
        "tenant_id": record.tenant_id,
        "key_id": record.key_id,
        "model": record.model,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.prompt_tokens + record.completion_tokens,
        "cached_prompt_tokens": record.cached_prompt_tokens,
        "cache_write_tokens": record.cache_write_tokens,
        "cost_usd": money(record.cost_usd),
        "cache": record.cache,
        "cache_hit": record.cache_hit,
        "saved_cost_usd": money(record.saved_cost_usd),
        "status": record.status,
        "error_type": record.error_type,
        "latency_ms": record.latency_ms,
        "stream": record.stream,
    }


def encode(record: UsageRecord) -> EncodedEvent:
    eid = event_id(record)
    return EncodedEvent(eid, record.tenant_id, orjson.dumps(to_event(record, eid)).decode())

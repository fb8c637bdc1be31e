"""Shared pieces of the usage-event tests: records, settings, polling with a deadline, reading SQS queues."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.config import Settings
from aigw.store.tables import usage_records
from aigw.store.usage import UsageRecord
from tests.support.gateway import ADMIN_KEY
from tests.support.moto import Moto

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schema" / "usage-event.v1.json"
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
# Fast loops so the suite runs in seconds; production defaults are in the config model.
FAST: dict[str, Any] = {"poll_interval_s": 0.05, "min_backoff_s": 0.05, "max_backoff_s": 0.3, "timeout_s": 2.0}


def record(n: int, tenant_id: str = "tenant-a", **overrides: Any) -> UsageRecord:
    base = UsageRecord(
        request_id=f"req-{tenant_id}-{n}",
        created_at=T0 + timedelta(milliseconds=n, microseconds=7),
        tenant_id=tenant_id,
        key_id="key_" + "1" * 24,
        model="gpt-4o",
        provider="openai",
        upstream_model="gpt-4o-2024-08-06",
        prompt_tokens=100 + n,
        completion_tokens=20 + n % 7,
        cached_prompt_tokens=n % 3,
        cache_write_tokens=n % 2,
        cost_usd=Decimal("0.0001234567") * (n + 1),  # more digits than the ledger keeps: rounded the same way
        status=200,
        latency_ms=12.25 + n,
        stream=n % 2 == 0,
        cache_hit=False,
        error_type=None,
        cache="miss",
        saved_cost_usd=None,
    )
    return dataclasses.replace(base, **overrides)


def records(count: int, tenant_id: str = "tenant-a", start: int = 0) -> list[UsageRecord]:
    return [record(n, tenant_id) for n in range(start, start + count)]


def settings(db_url: str, *sinks: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {"admin_key": ADMIN_KEY, "database_url": db_url, "events": [{**FAST, **s} for s in sinks]}
    )


async def wait_until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail with a clear message at the deadline (never sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


class QueueReader:
    """Reads (and deletes) every message of one SQS queue, in a worker thread so the publishers keep running."""

    def __init__(self, moto: Moto, queue_url: str) -> None:
        self.sqs = moto.client("sqs")
        self.url = queue_url
        self.messages: list[dict[str, Any]] = []

    def _receive(self) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])  # fmt: skip
        if got:
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
            )
        return got

    async def read_until(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """All messages once at least ``count`` arrived, then a short extra read to catch duplicates."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.messages)} of {count} messages within {timeout}s")
            got = await asyncio.to_thread(self._receive)
            self.messages.extend(got)
            if not got:
                await asyncio.sleep(0.02)
        self.messages.extend(await asyncio.to_thread(self._receive))
        return self.messages

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m["Body"]) for m in self.messages]


async def ledger(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """The usage_records rows by request id."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(usage_records))).mappings().all()
    return {r["request_id"]: dict(r) for r in rows}


def expected_event(r: dict[str, Any] | UsageRecord) -> dict[str, Any]:
    """What the event of a ledger row (or record) must say, field for field, computed independently of aigw.events."""
    d = r if isinstance(r, dict) else dataclasses.asdict(r)

    def money(v: Decimal | None) -> str | None:
        return None if v is None else f"{Decimal(v).quantize(Decimal('1e-9'), rounding='ROUND_HALF_UP'):f}"

    return {
        "request_id": d["request_id"],
        "timestamp": d["created_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "tenant_id": d["tenant_id"],
        "key_id": d["key_id"],
        "model": d["model"],
        "provider": d["provider"],
        "upstream_model": d["upstream_model"],
        "prompt_tokens": d["prompt_tokens"],
        "completion_tokens": d["completion_tokens"],
        "total_tokens": d["prompt_tokens"] + d["completion_tokens"],
        "cached_prompt_tokens": d["cached_prompt_tokens"],
        "cache_write_tokens": d["cache_write_tokens"],
        "cost_usd": money(d["cost_usd"]),
        "cache": d["cache"],
        "cache_hit": d["cache_hit"],
        "saved_cost_usd": money(d["saved_cost_usd"]),
        "status": d["status"],
        "error_type": d["error_type"],
        "latency_ms": d["latency_ms"],
        "stream": d["stream"],
    }


def without_ids(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("type", "schema_version", "event_id")}

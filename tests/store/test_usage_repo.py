"""UsageRepo on SQLite and PostgreSQL: bulk writes (COPY on PostgreSQL) and exact Decimal totals."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.tables import usage_records
from aigw.store.usage import ModelUsage, UsageRecord, UsageRepo, UsageSummary

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ZERO = Decimal("0.000000000")
MODELS = ["claude-sonnet", "gpt-4o", "local/llama3"]


def record(tenant_id: str, n: int, **overrides: Any) -> UsageRecord:
    base = UsageRecord(
        request_id=f"req-{tenant_id}-{n}",
        created_at=T0 + timedelta(seconds=n),
        tenant_id=tenant_id,
        key_id="key_" + "0" * 24,
        model="gpt-4o",
        provider="openai",
        upstream_model="gpt-4o-2024-08-06",
        prompt_tokens=10,
        completion_tokens=5,
        cached_prompt_tokens=0,
        cache_write_tokens=0,
        cost_usd=Decimal("0.000123456"),
        status=200,
        latency_ms=12.5,
        stream=False,
        cache_hit=False,
        error_type=None,
    )
    return dataclasses.replace(base, **overrides)


def random_records(tenant_id: str, count: int, seed: int) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        priced = rng.random() > 0.1
        hit = rng.random() > 0.9
        out.append(
            record(
                tenant_id,
                n,
                model=rng.choice(MODELS),
                prompt_tokens=rng.randint(0, 50_000),
                completion_tokens=rng.randint(0, 8_000),
                cached_prompt_tokens=rng.randint(0, 1000),
                cost_usd=Decimal(rng.randint(0, 10**10)).scaleb(-9) if priced else None,  # up to $10, 9 places
                status=rng.choice([200, 200, 200, 429, 502]),
                latency_ms=rng.uniform(1, 30_000),
                stream=rng.random() > 0.5,
                cache_hit=hit,
                cache="hit" if hit else rng.choice(["miss", "bypass", None]),
                saved_cost_usd=Decimal(rng.randint(0, 10**9)).scaleb(-9) if hit else None,
                provider=rng.choice(["openai", None]),
                error_type=rng.choice([None, "rate_limit_error"]),
            )
        )
    return out


def expected_summary(records: list[UsageRecord]) -> UsageSummary:
    groups: dict[str, list[UsageRecord]] = defaultdict(list)
    for r in records:
        groups[r.model].append(r)
    by_model = [
        ModelUsage(
            model=m,
            requests=len(rs),
            prompt_tokens=sum(r.prompt_tokens for r in rs),
            completion_tokens=sum(r.completion_tokens for r in rs),
            cost_usd=sum((r.cost_usd or Decimal(0) for r in rs), ZERO),
            cache_hits=sum(r.cache_hit for r in rs),
            saved_cost_usd=sum((r.saved_cost_usd or Decimal(0) for r in rs), ZERO),
        )
        for m, rs in sorted(groups.items())
    ]
    return UsageSummary(
        requests=len(records),
        prompt_tokens=sum(r.prompt_tokens for r in records),
        completion_tokens=sum(r.completion_tokens for r in records),
        cost_usd=sum((r.cost_usd or Decimal(0) for r in records), ZERO),
        by_model=by_model,
        cache_hits=sum(m.cache_hits for m in by_model),
        saved_cost_usd=sum((m.saved_cost_usd for m in by_model), ZERO),
    )


@pytest.fixture
def repo(db_engine: AsyncEngine) -> UsageRepo:
    return UsageRepo(db_engine)


def test_record_fields_are_the_table_columns() -> None:
    columns = [c.name for c in usage_records.columns if c.name != "id"]
    assert [f.name for f in dataclasses.fields(UsageRecord)] == columns


async def test_thousand_records_sum_exactly(repo: UsageRepo) -> None:
    mine = random_records("tenant-a", 1000, seed=1)
    theirs = random_records("tenant-b", 200, seed=2)
    await repo.insert_many(mine[:500])
    await repo.insert_many(theirs)
    await repo.insert_many(mine[500:])

    summary = await repo.tenant_usage("tenant-a")
    assert summary == expected_summary(mine)  # Decimal equality: not a float anywhere
    assert summary.cost_usd > 0 and any(r.cost_usd is None for r in mine)
    assert [m.model for m in summary.by_model] == MODELS
    assert all(isinstance(m.cost_usd, Decimal) for m in summary.by_model)
    assert await repo.count("tenant-a") == 1000
    assert await repo.count("tenant-b") == 200
    assert await repo.tenant_usage("tenant-b") == expected_summary(theirs)


async def test_unknown_prices_count_as_zero(repo: UsageRepo) -> None:
    await repo.insert_many([record("t", n, cost_usd=None) for n in range(3)])
    summary = await repo.tenant_usage("t")
    assert (summary.requests, summary.prompt_tokens, summary.cost_usd) == (3, 30, ZERO)
    assert summary.by_model == [ModelUsage("gpt-4o", 3, 30, 15, ZERO)]
    assert str(summary.cost_usd) == "0E-9"  # quantized to the column's scale like every other total


async def test_no_usage(repo: UsageRepo) -> None:
    assert await repo.tenant_usage("nobody") == UsageSummary(0, 0, 0, ZERO, [])
    assert await repo.count("nobody") == 0


async def test_since_filters_by_created_at(repo: UsageRepo) -> None:
    records = [record("t", n, created_at=T0 + timedelta(days=n)) for n in range(10)]
    await repo.insert_many(records)
    # The same instant written in another zone: comparisons are on instants, not wall-clock text.
    since = (T0 + timedelta(days=7)).astimezone(timezone(timedelta(hours=-8)))
    assert await repo.tenant_usage("t", since=since) == expected_summary(records[7:])


async def test_cost_extremes_and_rounding(repo: UsageRepo) -> None:
    costs = [Decimal("999999999.999999999"), Decimal("0.000000001"), Decimal("0.0000000015"), Decimal("-0.25")]
    await repo.insert_many([record("t", n, cost_usd=c) for n, c in enumerate(costs)])
    summary = await repo.tenant_usage("t")
    # 0.0000000015 rounds half away from zero to 9 places on both backends.
    assert summary.cost_usd == Decimal("999999999.999999999") + Decimal("0.000000001") + Decimal(
        "0.000000002"
    ) - Decimal("0.25")


async def test_insert_many_of_nothing(repo: UsageRepo) -> None:
    await repo.insert_many([])
    assert await repo.count("t") == 0


async def test_a_bad_record_fails_the_whole_batch(repo: UsageRepo) -> None:
    batch = [record("t", n) for n in range(5)]
    batch[3] = record("t", 3, model=None)  # NOT NULL violation
    with pytest.raises(Exception, match=r"(?i)null"):
        await repo.insert_many(batch)
    assert await repo.count("t") == 0
    await repo.insert_many(batch[:3])  # the connection is still usable afterwards
    assert await repo.count("t") == 3


async def test_a_bad_record_in_a_later_copy_fails_the_whole_batch(repo: UsageRepo) -> None:
    """PostgreSQL gets a large batch in several COPYs (store.bulk): one failing late takes the earlier ones back."""
    batch = [record("t", n) for n in range(250)]
    batch[230] = record("t", 230, model=None)
    with pytest.raises(Exception, match=r"(?i)null"):
        await repo.insert_many(batch)
    assert await repo.count("t") == 0
    await repo.insert_many(batch[:230])
    assert await repo.count("t") == 230 and (await repo.tenant_usage("t")).requests == 230


async def test_naive_created_at_is_refused(repo: UsageRepo) -> None:
    with pytest.raises(Exception, match="naive"):
        await repo.insert_many([record("t", 0, created_at=datetime(2026, 1, 1))])
    assert await repo.count("t") == 0


async def test_rows_read_back_as_written(repo: UsageRepo, db_engine: AsyncEngine) -> None:
    """Each backend's fast write path (COPY; a raw executemany on SQLite) stores what the column types would."""
    zone = timezone(timedelta(hours=5, minutes=30))
    written = [
        record("t", 0, created_at=datetime(2026, 11, 26, 23, 59, 59, 999999, tzinfo=zone)),
        record("t", 1, cost_usd=Decimal("0.0000000015"), saved_cost_usd=Decimal("1.25"), cache="hit", cache_hit=True),
        record("t", 2, cost_usd=None, key_id=None, provider=None, upstream_model=None, error_type="timeout"),
    ]
    await repo.insert_many(written)
    async with db_engine.connect() as conn:
        rows = (await conn.execute(select(usage_records).order_by(usage_records.c.request_id))).mappings().all()
    got = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    want = [dataclasses.asdict(r) for r in written]
    want[0]["created_at"] = written[0].created_at.astimezone(UTC)
    want[1]["cost_usd"] = Decimal("0.000000002")  # rounded half away from zero to the column's 9 places
    assert got == want


async def test_a_record_the_database_refuses_does_not_block_the_others(repo: UsageRepo) -> None:
    """A row the database will never take (here NOT NULL; on PostgreSQL also an over-long value) is set aside and
    counted; the records around it are written, instead of the batch being retried whole for ever."""
    from aigw.metering import UsageRecorder

    rec = UsageRecorder(repo, batch_size=5, flush_interval_s=60)
    rec.start()
    try:
        for n in range(12):
            rec.record(record("t", n, model=None) if n == 3 else record("t", n))
        await asyncio.wait_for(rec.flush(), 10)
        assert (rec.written, rec.rejected, rec.pending) == (11, 1, 0)
        assert await repo.count("t") == 11
    finally:
        await rec.stop()


class AckLostRepo:
    """The real ledger, but the first write's acknowledgement is lost after its commit went through (a connection
    dropped after COMMIT): the caller sees a failure and writes the batch again."""

    def __init__(self, repo: UsageRepo) -> None:
        self.repo = repo
        self.lost = 0

    async def insert_many(self, records: Sequence[UsageRecord]) -> None:
        await self.repo.insert_many(records)
        if self.lost == 0:
            self.lost += 1
            raise ConnectionResetError("connection lost after COMMIT")


async def test_a_batch_written_again_after_a_lost_acknowledgement_counts_once(repo: UsageRepo) -> None:
    from aigw.metering import UsageRecorder

    flaky = AckLostRepo(repo)
    rec = UsageRecorder(cast(UsageRepo, flaky), batch_size=10, flush_interval_s=60)
    rec.start()
    try:
        batch = [record("t", n) for n in range(10)]
        for r in batch:
            rec.record(r)
        await asyncio.wait_for(rec.flush(), 10)
        assert flaky.lost == 1 and rec.failures == 1, "the first write was taken for a failure and retried"
    finally:
        await rec.stop()
    assert await repo.count("t") == 10, "raw rows once"
    assert (await repo.tenant_usage("t")).requests == 10, "rollups once"
    await repo.insert_many([*batch[:4], record("t", 10)])  # a partly written batch again, with one new record
    assert await repo.count("t") == 11 and (await repo.tenant_usage("t")).requests == 11

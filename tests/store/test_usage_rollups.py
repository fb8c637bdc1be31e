"""usage_daily on SQLite and PostgreSQL: kept in step with every raw batch, read by every report, kept by prune."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from alembic import command
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.store.db import make_engine
from aigw.store.migrate import alembic_config, upgrade_to_head
from aigw.store.tables import tenants, usage_daily, usage_records
from aigw.store.usage import DayUsage, ModelUsage, UsageRecord, UsageRepo, UsageSummary
from tests.store.test_usage_repo import T0, ZERO, expected_summary, random_records, record
from tests.support.databases import run_private

Q = Decimal("1e-9")


def spread(records: list[UsageRecord], hours: int = 7) -> list[UsageRecord]:
    """The same records spread over several UTC days (every ``hours`` hours)."""
    return [dataclasses.replace(r, created_at=T0 + timedelta(hours=hours * n)) for n, r in enumerate(records)]


def expected_rollups(records: list[UsageRecord]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    acc: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, 0, ZERO, 0, 0, ZERO])
    for r in records:
        row = acc[(r.tenant_id, r.created_at.astimezone(UTC).date(), r.model, r.provider or "")]
        for i, n in enumerate((1, r.prompt_tokens, r.completion_tokens, r.cached_prompt_tokens, r.cache_write_tokens)):
            row[i] += n
        if r.cost_usd is None:
            row[6] += 1
        else:
            row[5] += r.cost_usd.quantize(Q, rounding=ROUND_HALF_UP)
        row[7] += r.cache_hit
        if r.saved_cost_usd is not None:
            row[8] += r.saved_cost_usd.quantize(Q, rounding=ROUND_HALF_UP)
    return {k: tuple(v) for k, v in acc.items()}


async def rollup_rows(engine: AsyncEngine) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(usage_daily))).all()
    return {
        (r.tenant_id, r.day, r.model, r.provider): (
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_prompt_tokens,
            r.cache_write_tokens,
            r.cost_usd,
            r.unpriced_requests,
            r.cache_hits,
            r.saved_cost_usd,
        )
        for r in rows
    }


@pytest.fixture
def repo(db_engine: AsyncEngine) -> UsageRepo:
    return UsageRepo(db_engine)


async def test_rollups_equal_raw_sums_across_batches(repo: UsageRepo, db_engine: AsyncEngine) -> None:
    mine = spread(random_records("tenant-a", 600, seed=3))
    theirs = spread(random_records("tenant-b", 150, seed=4), hours=5)
    # Overlapping batches: the same (tenant, day, model, provider) keys are added to by several transactions.
    for batch in (mine[:200], theirs, mine[200:201], mine[201:]):
        await repo.insert_many(batch)
    assert await rollup_rows(db_engine) == expected_rollups(mine + theirs)
    assert len({k[1] for k in expected_rollups(mine)}) > 10  # really spread over many days
    # Summaries from the rollups equal the sums of the raw records, to the last 1e-9.
    assert await repo.tenant_usage("tenant-a") == expected_summary(mine)
    assert await repo.tenant_usage("tenant-b") == expected_summary(theirs)


async def test_a_failed_batch_adds_nothing_to_the_rollups(repo: UsageRepo, db_engine: AsyncEngine) -> None:
    await repo.insert_many([record("t", 0)])
    before = await rollup_rows(db_engine)
    batch = [record("t", n) for n in range(1, 5)] + [record("t", 9, model=None)]
    with pytest.raises(Exception, match=r"(?i)null"):
        await repo.insert_many(batch)
    with pytest.raises(Exception, match="naive"):
        await repo.insert_many([record("t", 10, created_at=datetime(2026, 1, 1))])
    assert await rollup_rows(db_engine) == before


async def test_days_are_utc_days(repo: UsageRepo) -> None:
    plus5 = timezone(timedelta(hours=5))
    await repo.insert_many(
        [
            record("t", 1, created_at=datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=UTC)),
            record("t", 2, created_at=datetime(2026, 11, 2, 0, 0, 0, tzinfo=UTC)),
            # 01:00 on Nov 3 at +05:00 is 20:00 UTC on Nov 2.
            record("t", 3, created_at=datetime(2026, 11, 3, 1, 0, tzinfo=plus5), prompt_tokens=1),
            # 23:00 on Nov 2 at -05:00 is 04:00 UTC on Nov 3.
            record("t", 4, created_at=datetime(2026, 11, 2, 23, 0, tzinfo=timezone(-timedelta(hours=5)))),
        ]
    )
    report = await repo.report("t", group_by="day")
    cost = Decimal("0.000123456")
    assert report.by_day == [
        DayUsage(date(2026, 11, 1), 1, 10, 5, cost),
        DayUsage(date(2026, 11, 2), 2, 11, 10, 2 * cost),
        DayUsage(date(2026, 11, 3), 1, 10, 5, cost),
    ]
    only_2nd = await repo.report("t", start=date(2026, 11, 2), end=date(2026, 11, 2), group_by="day")
    assert only_2nd.summary.requests == 2 and [d.day for d in only_2nd.by_day or []] == [date(2026, 11, 2)]


async def test_report_by_model_and_day_with_a_period(repo: UsageRepo) -> None:
    records = [
        record("t", n, created_at=T0 + timedelta(days=n % 4), model=m, cost_usd=None if n == 5 else Decimal("0.5"))
        for n, m in enumerate(["a", "b", "a", "b", "a", "b", "a", "b"])
    ]
    await repo.insert_many([*records, record("other", 0, model="a")])
    # Days: n % 4 -> Nov 1..4; period Nov 2..3 keeps n in {1, 2, 5, 6}.
    report = await repo.report("t", start=date(2026, 11, 2), end=date(2026, 11, 3), group_by="day")
    assert report.summary == UsageSummary(
        4,
        40,
        20,
        Decimal("1.5"),
        [ModelUsage("a", 2, 20, 10, Decimal("1.0")), ModelUsage("b", 2, 20, 10, Decimal("0.5"))],
    )
    assert report.by_day == [
        DayUsage(date(2026, 11, 2), 2, 20, 10, Decimal("0.5")),  # n=1 and n=5 (unpriced)
        DayUsage(date(2026, 11, 3), 2, 20, 10, Decimal("1.0")),
    ]
    assert (await repo.report("t", start=date(2026, 11, 2))).by_day is None  # group_by="model" by default
    assert (await repo.report("t", end=date(2026, 10, 31), group_by="day")) == (
        dataclasses.replace(report, summary=UsageSummary(0, 0, 0, ZERO, []), by_day=[])
    )


async def test_since_must_be_a_utc_day_boundary(repo: UsageRepo) -> None:
    with pytest.raises(ValueError, match="day boundary"):
        await repo.tenant_usage("t", since=T0 + timedelta(hours=1))


async def test_prune_deletes_raw_rows_and_keeps_rollups(repo: UsageRepo, db_engine: AsyncEngine) -> None:
    records = [record("t", n, created_at=T0 + timedelta(days=n)) for n in range(10)]
    await repo.insert_many(records)
    before = await repo.report("t", group_by="day")
    rollups = await rollup_rows(db_engine)
    assert await repo.prune(T0 + timedelta(days=7)) == 7
    assert await repo.count("t") == 3
    assert await repo.report("t", group_by="day") == before
    assert await rollup_rows(db_engine) == rollups
    assert await repo.prune(T0 + timedelta(days=7)) == 0


async def test_twenty_thousand_rows_then_a_report(repo: UsageRepo) -> None:
    records = spread(random_records("big", 20_000, seed=5), hours=1)  # one an hour: ~834 UTC days
    await repo.insert_many(records)
    report = await repo.report("big", group_by="day")
    assert report.summary == expected_summary(records)
    assert report.by_day is not None and len(report.by_day) == len({r.created_at.date() for r in records})
    assert sum(d.requests for d in report.by_day) == 20_000
    assert sum((d.cost_usd for d in report.by_day), ZERO) == report.summary.cost_usd


async def test_tenants_report_names_each_tenant(repo: UsageRepo, db_engine: AsyncEngine) -> None:
    async with db_engine.begin() as conn:
        await conn.execute(insert(tenants).values(id="t1", name="Acme", created_at=T0, updated_at=T0))
    await repo.insert_many([record("t1", 0), record("t1", 1), record("ghost", 2, created_at=T0 + timedelta(days=3))])
    rows = await repo.tenants_report()
    assert [(r.tenant_id, r.name, r.requests) for r in rows] == [("ghost", None, 1), ("t1", "Acme", 2)]
    assert [r.tenant_id for r in await repo.tenants_report(start=date(2026, 11, 2))] == ["ghost"]
    assert [r.tenant_id for r in await repo.tenants_report(tenant_id="t1")] == ["t1"]
    assert await repo.tenants_report(end=date(2026, 10, 1)) == []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("empty_sqlite_url" if request.param == "sqlite" else "empty_pg_url")
    assert isinstance(url, str)
    return url


def test_migration_backfills_rollups_from_existing_rows(empty_url: str) -> None:
    command.upgrade(alembic_config(empty_url), "0001_initial")
    records = [*spread(random_records("old", 300, seed=6)), record("old", 999, created_at=T0 - timedelta(seconds=1))]
    # Rows written before 0003 have no cache outcome or saving; their hits are backfilled from cache_hit.
    records = [dataclasses.replace(r, cache=None, saved_cost_usd=None) for r in records]
    assert any(r.cache_hit for r in records)
    new_columns = {"cache", "saved_cost_usd", "record_id"}  # columns added after 0001

    async def write_raw() -> None:
        engine = make_engine(empty_url)
        try:
            async with engine.begin() as conn:
                rows = [
                    {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name not in new_columns}
                    for r in records
                ]
                await conn.execute(insert(usage_records), rows)
        finally:
            await engine.dispose()

    async def check() -> None:
        engine = make_engine(empty_url)
        try:
            assert await rollup_rows(engine) == expected_rollups(records)
            assert await UsageRepo(engine).tenant_usage("old") == expected_summary(records)
        finally:
            await engine.dispose()

    run_private(write_raw())
    upgrade_to_head(empty_url)
    run_private(check())

"""Response cache in the ledger: each record's cache outcome and the cost a hit saved; daily hit and saving totals

Revision ID: 0003_cache
Revises: 0002_usage_daily
Create Date: 2026-11-26 09:00:00

Added columns only (no rewrite of existing rows): records from before this revision have ``cache`` NULL and no
saving, and their rollups count no hits, which is what happened.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_cache"
down_revision: str | Sequence[str] | None = "0002_usage_daily"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Hits recorded before this revision (usage_records.cache_hit, there since 0001) are counted into the new column.
_BACKFILL_HITS = """
UPDATE usage_daily SET cache_hits = (
    SELECT COUNT(*) FROM usage_records r
    WHERE r.cache_hit AND r.tenant_id = usage_daily.tenant_id AND {day} = usage_daily.day
      AND r.model = usage_daily.model AND COALESCE(r.provider, '') = usage_daily.provider
)
"""
_DAY = {"postgresql": "CAST(r.created_at AT TIME ZONE 'UTC' AS DATE)", "sqlite": "date(r.created_at)"}


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("cache", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("saved_cost_usd", sa.Numeric(precision=18, scale=9), nullable=True))
    with op.batch_alter_table("usage_daily") as batch:
        batch.add_column(sa.Column("cache_hits", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
        batch.add_column(
            sa.Column("saved_cost_usd", sa.Numeric(precision=18, scale=9), server_default=sa.text("0"), nullable=False)
        )
    op.execute(_BACKFILL_HITS.format(day=_DAY[op.get_context().dialect.name]))


def downgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.drop_column("saved_cost_usd")
        batch.drop_column("cache_hits")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("saved_cost_usd")
        batch.drop_column("cache")

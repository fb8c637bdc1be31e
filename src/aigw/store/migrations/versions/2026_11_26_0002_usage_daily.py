"""usage_daily rollups (backfilled from usage_records), and an index on usage_records.created_at for retention

Revision ID: 0002_usage_daily
Revises: 0001_initial
Create Date: 2026-11-26 00:02:00

Plain SQLAlchemy types, as in 0001: Money is stored as Numeric(18, 9). The backfill is one INSERT … SELECT per
dialect; on SQLite created_at is naive UTC text and cost_usd an integer count of 1e-9 USD, so date() and SUM are
exact there too.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_usage_daily"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO usage_daily (tenant_id, day, model, provider, requests, prompt_tokens, completion_tokens,
                         cached_prompt_tokens, cache_write_tokens, cost_usd, unpriced_requests)
SELECT tenant_id, {day}, model, COALESCE(provider, ''), COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),
       SUM(cached_prompt_tokens), SUM(cache_write_tokens), COALESCE(SUM(cost_usd), 0),
       SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)
FROM usage_records
GROUP BY tenant_id, {day}, model, COALESCE(provider, '')
"""
_DAY = {"postgresql": "CAST(created_at AT TIME ZONE 'UTC' AS DATE)", "sqlite": "date(created_at)"}


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=18, scale=9), nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", "model", "provider", name=op.f("pk_usage_daily")),
    )
    op.create_index(op.f("ix_usage_daily_day"), "usage_daily", ["day"])
    op.create_index(op.f("ix_usage_records_created_at"), "usage_records", ["created_at"])
    op.execute(_BACKFILL.format(day=_DAY[op.get_context().dialect.name]))


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_records_created_at"), table_name="usage_records")
    op.drop_index(op.f("ix_usage_daily_day"), table_name="usage_daily")
    op.drop_table("usage_daily")

"""Usage events: the transactional outbox (one row per usage record and sink) and per-sink drop totals

Revision ID: 0004_usage_events
Revises: 0003_cache
Create Date: 2026-11-26 12:00:00

New tables only. Records written before this revision get no events: the outbox starts empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_usage_events"
down_revision: str | Sequence[str] | None = "0003_cache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_event_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("sink", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claim", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_event_outbox")),
    )
    op.create_index(op.f("ix_usage_event_outbox_sink_id"), "usage_event_outbox", ["sink", "id"])
    op.create_table(
        "usage_event_sinks",
        sa.Column("sink", sa.String(length=100), nullable=False),
        sa.Column("dropped", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_dropped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sink", name=op.f("pk_usage_event_sinks")),
    )


def downgrade() -> None:
    op.drop_table("usage_event_sinks")
    op.drop_index(op.f("ix_usage_event_outbox_sink_id"), table_name="usage_event_outbox")
    op.drop_table("usage_event_outbox")

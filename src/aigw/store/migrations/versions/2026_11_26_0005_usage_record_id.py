"""Usage records carry the gateway's own id, unique: a batch written again is not counted twice

Revision ID: 0005_usage_record_id
Revises: 0004_usage_events
Create Date: 2026-11-26 18:00:00

A nullable column (rows written before this revision have none) and a unique index on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_usage_record_id"
down_revision: str | Sequence[str] | None = "0004_usage_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_records", sa.Column("record_id", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_usage_records_record_id"), "usage_records", ["record_id"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_records_record_id"), table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("record_id")

"""The schema, as SQLAlchemy Core tables. Migrations must produce exactly this (a test checks it)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

from aigw.store.types import Money, UTCDateTime

# Named constraints let Alembic (and SQLite batch mode in particular) find and alter them later.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("rate_limit_rpm", Integer, nullable=True),
    Column("rate_limit_tpm", Integer, nullable=True),
    Column("monthly_budget_usd", Money(18, 6), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Soft delete: usage rows keep pointing at a tenant that still exists.
    Column("deleted_at", UTCDateTime, nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False),
    # Hex SHA-256 of the key; the key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    # updated_at drives the cross-process key sync; tenant_id serves "revoke every key of this tenant".
    Index(None, "updated_at"),
    Index(None, "tenant_id"),
)

usage_records = Table(
    "usage_records",
    metadata,
    # SQLite only auto-increments an INTEGER PRIMARY KEY, so BIGINT there would need explicit ids.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # No foreign keys: usage is append-only history and is written in bulk off the request path.
    Column("tenant_id", String(32), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("model", String(200), nullable=False),  # what the client asked for (alias or provider/model)
    Column("provider", String(100), nullable=True),
    Column("upstream_model", String(200), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, server_default=text("0")),
    Column("completion_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cached_prompt_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cache_write_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cost_usd", Money(18, 9), nullable=True),  # null = price unknown, not free
    Column("status", Integer, nullable=False),  # HTTP status returned to the client
    Column("latency_ms", Float, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("cache_hit", Boolean, nullable=False, server_default=false()),
    Column("error_type", String(100), nullable=True),
    Column("cache", String(8), nullable=True),  # x-aigw-cache: hit | miss | bypass (null: not a chat request)
    Column("saved_cost_usd", Money(18, 9), nullable=True),  # a cache hit: what the stored answer cost when served
    # The gateway's own id for the record (null for rows written before revision 0005): a batch written again after
    # its commit's acknowledgement was lost, or re-flushed at shutdown, is recognised and not counted twice.
    Column("record_id", String(32), nullable=True),
    # Index plan. Reports never scan this table (they read usage_daily), so it carries only what its own access
    # paths need, each index costing every COPY a little:
    # * (tenant_id, created_at): one tenant's raw records for a period (support, exports, the e2e tests' ledger).
    # * (created_at): retention deletes (``UsageRepo.prune``), a range from the oldest row up to the cut-off.
    # No index on model/provider/key_id: per-model totals come from usage_daily.
    # * (record_id), unique: a batch written again is recognised (``UsageRepo.insert_many``).
    Index(None, "tenant_id", "created_at"),
    Index(None, "created_at"),
    Index(None, "record_id", unique=True),
)

# Daily rollups of usage_records per (tenant, UTC day, model as sent, provider), kept in the same transaction as
# each raw batch (``UsageRepo.insert_many``): reports read this table only, so they stay fast with millions of raw
# rows and survive the raw rows' retention. Provider "" stands for an unknown provider (a NULL in a key column would
# never conflict, so upserts could not find the row). Counters are BIGINT: a busy tenant's daily tokens outgrow INT.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("tenant_id", String(32), primary_key=True),
    Column("day", Date, primary_key=True),  # UTC
    Column("model", String(200), primary_key=True),
    Column("provider", String(100), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_prompt_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("cost_usd", Money(18, 9), nullable=False),  # priced records only; unknown prices add 0
    Column("unpriced_requests", BigInteger, nullable=False),  # records whose cost_usd is null
    Column("cache_hits", BigInteger, nullable=False, server_default=text("0")),
    Column("saved_cost_usd", Money(18, 9), nullable=False, server_default=text("0")),
    # Serves the admin report and the CLI's all-tenant period totals: both filter on day.
    Index(None, "day"),
)

# Transactional outbox for usage events (aigw.events): one row per (usage record, configured sink), written in the
# same transaction as the record itself (``UsageRepo.insert_many``), deleted once that sink has it. A row per sink
# lets each sink progress, fail and be bounded on its own. ``available_at`` is both the lease of a publisher that
# claimed the row (``claim`` names the claim) and the back-off after a failure; rows are picked in id order.
usage_event_outbox = Table(
    "usage_event_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("sink", String(100), nullable=False),
    Column("event_id", String(36), nullable=False),  # the event's idempotency id (also the FIFO deduplication id)
    Column("tenant_id", String(32), nullable=False),  # the FIFO message group
    Column("created_at", UTCDateTime, nullable=False),
    Column("available_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("claim", String(32), nullable=True),
    Column("last_error", String(300), nullable=True),
    Column("body", Text, nullable=False),  # the encoded event, sent as-is
    # Claims scan one sink's rows in id order; backlog counts and trims read the same range.
    Index(None, "sink", "id"),
)

# Per-sink totals that must survive restarts and be the same on every replica: events dropped by the backlog bound.
usage_event_sinks = Table(
    "usage_event_sinks",
    metadata,
    Column("sink", String(100), primary_key=True),
    Column("dropped", BigInteger, nullable=False, server_default=text("0")),
    Column("last_dropped_at", UTCDateTime, nullable=True),
)

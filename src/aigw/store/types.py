"""Column types that behave the same on PostgreSQL and SQLite.

* ``UTCDateTime``: aware UTC in, aware UTC out. SQLite keeps datetimes as fixed-width text without an offset, so
  everything is normalised to UTC before it is written; text comparisons then order like the instants do.
* ``Money``: exact decimals. SQLite has no decimal type (SQLAlchemy would round-trip through ``float``), so there the
  value is stored as an integer count of the smallest unit (``scale`` digits). Integer ``SUM`` stays exact; the
  column is still declared ``NUMERIC(p, s)``, so the schema is the same on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # A naive datetime is ambiguous; guessing its zone would silently shift sync marks and reports.
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _PlainNumeric(Numeric[Decimal]):
    """Renders as NUMERIC(p, s) but leaves values to ``Money``: no float conversion, no lossy-decimal warning."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class Money(TypeDecorator[Decimal]):
    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale

    @property
    def quantum(self) -> Decimal:
        return Decimal(1).scaleb(-self.scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _PlainNumeric(self.precision, self.scale)
        return self.impl_instance

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Decimal | int | None:
        if value is None:
            return None
        # Round the way PostgreSQL's numeric does (half away from zero), so both backends store the same value.
        exact = Decimal(value).quantize(self.quantum, rounding=ROUND_HALF_UP)
        if dialect.name == "sqlite":
            return int(exact.scaleb(self.scale))
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if isinstance(value, float):  # only a hand-written row could hold a float; keep its written digits
                value = int(Decimal(repr(value)).scaleb(self.scale))
            return Decimal(int(value)).scaleb(-self.scale).quantize(self.quantum)
        return Decimal(value).quantize(self.quantum)

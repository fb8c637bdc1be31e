"""Usage events: one JSON event per completed request, delivered at least once to SQS, SNS or webhooks through a
transactional outbox in the ledger's database (see docs/events.md)."""

from aigw.events.outbox import Outbox
from aigw.events.schema import EVENT_TYPE, SCHEMA_VERSION
from aigw.events.service import EventMetrics, EventService

__all__ = ["EVENT_TYPE", "SCHEMA_VERSION", "EventMetrics", "EventService", "Outbox"]

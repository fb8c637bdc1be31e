"""What a publisher sends through (a ``Sender``), how sinks are named, and building a sender from its config.

The AWS senders import botocore lazily: a gateway without an SQS or SNS sink runs without it installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from aigw.config.model import SnsSink, SqsSink, WebhookSink
from aigw.events.outbox import OutboxRow

SinkConfig = SqsSink | SnsSink | WebhookSink


class SendError(Exception):
    """A whole call failed (the sink is down, refused the batch, timed out): every event in it is retried."""


class Sender(Protocol):
    """Delivers batches of encoded events to one destination."""

    @property
    def target(self) -> str:
        """The destination, for status pages and logs (never a secret)."""
        ...

    async def send(self, rows: Sequence[OutboxRow]) -> dict[int, str]:
        """Deliver ``rows`` (at most the sink's ``batch_size``) in one call. Returns the rows the destination
        rejected one by one (row id → reason); every other row was accepted. Raises on a failed call."""
        ...

    async def close(self) -> None: ...


def default_name(cfg: SinkConfig) -> str:
    """A name that is stable across restarts and replicas: it keys the sink's rows in the outbox."""
    if isinstance(cfg, SqsSink):
        return "sqs:" + (urlsplit(cfg.queue_url).path.rstrip("/").rsplit("/", 1)[-1] or cfg.queue_url)
    if isinstance(cfg, SnsSink):
        return "sns:" + cfg.topic_arn.rsplit(":", 1)[-1]
    return "webhook:" + (urlsplit(cfg.url).hostname or cfg.url)


def sink_names(sinks: Sequence[SinkConfig]) -> list[str]:
    """Each configured sink's name (explicit or derived), in config order; duplicates are a config error."""
    names = [(cfg.name or default_name(cfg))[:100] for cfg in sinks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"events: sink names must be unique; give these sinks distinct `name:` values: {dupes}")
    return names


def build_sender(cfg: SinkConfig) -> Sender:
    if isinstance(cfg, WebhookSink):
        from aigw.events.webhook import WebhookSender

        return WebhookSender(cfg)
    if importlib.util.find_spec("botocore") is None:
        # Refuse to start rather than queue events that could never leave.
        raise RuntimeError(f"events: the {cfg.type} sink needs botocore; install it with: pip install 'aigw[aws]'")
    from aigw.events.aws import SnsSender, SqsSender

    if isinstance(cfg, SqsSink):
        return SqsSender(cfg)
    return SnsSender(cfg)

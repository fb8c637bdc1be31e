"""SQS and SNS senders: ``SendMessageBatch`` / ``PublishBatch``, 10 events a call, through botocore.

botocore is synchronous, so each sink gets its own small thread pool: a hung AWS endpoint then ties up only its own
sink's threads, never the event loop or the default executor. Credentials come from botocore's standard chain
(environment, profile, container or instance role); botocore's own retries are off because the publisher retries
with back-off and must see every failure.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aigw.config.model import SnsSink, SqsSink
from aigw.events.outbox import OutboxRow
from aigw.events.schema import EVENT_TYPE
from aigw.events.sinks import SendError

_SQS_REGION = re.compile(r"^(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com", re.IGNORECASE)


def sqs_region(queue_url: str) -> str | None:
    """``https://sqs.eu-west-1.amazonaws.com/123/q`` → ``eu-west-1`` (also the legacy ``eu-west-1.queue`` host)."""
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    m = _SQS_REGION.match(host)
    return m.group(1) if m else None


def arn_region(arn: str) -> str | None:
    """``arn:aws:sns:us-east-1:123456789012:usage`` → ``us-east-1``."""
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or not parts[3]:
        return None
    return parts[3]


def _attributes(row: OutboxRow) -> dict[str, Any]:
    # Lets SNS subscription filter policies and SQS consumers route by tenant without parsing the body.
    return {
        "tenant_id": {"DataType": "String", "StringValue": row.tenant_id},
        "event_type": {"DataType": "String", "StringValue": EVENT_TYPE},
    }


class _BotocoreSender:
    def __init__(
        self, service: str, region: str | None, endpoint_url: str | None, timeout_s: float, parallel: int
    ) -> None:
        self._service = service
        self._region = region
        self._endpoint = endpoint_url
        self._timeout = timeout_s
        self._parallel = parallel
        self._executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"aigw-events-{service}")
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        # Built on first use, in a worker thread: loading the service model takes a noticeable fraction of a second.
        with self._lock:
            if self._client is None:
                import botocore.session
                from botocore.config import Config

                self._client = botocore.session.get_session().create_client(
                    self._service,
                    region_name=self._region,
                    endpoint_url=self._endpoint,
                    config=Config(
                        connect_timeout=self._timeout,
                        read_timeout=self._timeout,
                        retries={"total_max_attempts": 1},
                        max_pool_connections=self._parallel,
                    ),
                )
            return self._client

    def _invoke(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = getattr(self._get_client(), operation)(**kwargs)
        return result

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self._invoke, operation, kwargs))
        except Exception as exc:  # botocore's errors name the cause (NonExistentQueue, EndpointConnectionError, …)
            raise SendError(f"{operation}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _failures(rows: Sequence[OutboxRow], response: dict[str, Any]) -> dict[int, str]:
        by_entry = {str(r.id): r.id for r in rows}
        failed: dict[int, str] = {}
        for f in response.get("Failed") or ():
            row_id = by_entry.get(str(f.get("Id")))
            if row_id is not None:
                failed[row_id] = f"{f.get('Code', 'Failed')}: {f.get('Message', '')}".strip()
        return failed

    async def close(self) -> None:
        # Threads stuck in a call end by botocore's own timeouts; nothing waits for them here.
        self._executor.shutdown(wait=False, cancel_futures=True)
        client = self._client
        if client is not None and hasattr(client, "close"):
            client.close()


def _entries(rows: Sequence[OutboxRow], body_field: str, *, fifo: bool) -> list[dict[str, Any]]:
    """Batch entries for SendMessageBatch / PublishBatch (same shape but the body's field name). FIFO: one message
    group per tenant keeps each tenant's events in order without serialising the others."""
    entries = []
    for r in rows:
        entry: dict[str, Any] = {"Id": str(r.id), body_field: r.body, "MessageAttributes": _attributes(r)}
        if fifo:
            entry["MessageGroupId"] = r.tenant_id
            entry["MessageDeduplicationId"] = r.event_id
        entries.append(entry)
    return entries


class SqsSender(_BotocoreSender):
    def __init__(self, cfg: SqsSink) -> None:
        region = cfg.region or sqs_region(cfg.queue_url)
        super().__init__("sqs", region, cfg.endpoint_url, cfg.timeout_s, cfg.parallel)
        self._url = cfg.queue_url
        self.fifo = cfg.queue_url.endswith(".fifo")

    @property
    def target(self) -> str:
        return self._url

    async def send(self, rows: Sequence[OutboxRow]) -> dict[int, str]:
        entries = _entries(rows, "MessageBody", fifo=self.fifo)
        response = await self._call("send_message_batch", QueueUrl=self._url, Entries=entries)
        return self._failures(rows, response)


class SnsSender(_BotocoreSender):
    def __init__(self, cfg: SnsSink) -> None:
        region = cfg.region or arn_region(cfg.topic_arn)
        super().__init__("sns", region, cfg.endpoint_url, cfg.timeout_s, cfg.parallel)
        self._arn = cfg.topic_arn
        self.fifo = cfg.topic_arn.endswith(".fifo")

    @property
    def target(self) -> str:
        return self._arn

    async def send(self, rows: Sequence[OutboxRow]) -> dict[int, str]:
        entries = _entries(rows, "Message", fifo=self.fifo)
        response = await self._call("publish_batch", TopicArn=self._arn, PublishBatchRequestEntries=entries)
        return self._failures(rows, response)

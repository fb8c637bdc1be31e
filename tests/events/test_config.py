"""The ``events:`` config: delivery knobs with safe defaults, AWS batch limits, stable sink names."""

from __future__ import annotations

import pydantic
import pytest

from aigw.config import Settings
from aigw.config.model import SqsSink, WebhookSink
from aigw.events.sinks import default_name, sink_names
from tests.support.gateway import ADMIN_KEY


def _settings(*events: dict[str, object]) -> Settings:
    return Settings.model_validate({"admin_key": ADMIN_KEY, "events": list(events)})


def test_contract_example_parses_with_defaults() -> None:
    s = _settings(
        {"type": "sqs", "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/usage", "region": "us-east-1",
         "endpoint_url": None},
        {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:usage", "region": "us-east-1"},
        {"type": "webhook", "url": "https://billing.internal/hooks/aigw", "secret": "s3cret"},
    )  # fmt: skip
    sqs, sns, hook = s.events
    assert (sqs.batch_size, sns.batch_size, hook.batch_size) == (10, 10, 100)
    assert sqs.max_backlog == 100_000 and sqs.max_backoff_s <= 30 and sqs.timeout_s == 10.0
    assert sink_names(s.events) == ["sqs:usage", "sns:usage", "webhook:billing.internal"]
    assert isinstance(hook, WebhookSink) and hook.secret is not None
    assert "s3cret" not in repr(hook)  # a SecretStr


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "sqs", "queue_url": "u", "batch_size": 11},  # SendMessageBatch takes at most 10
        {"type": "sns", "topic_arn": "a", "batch_size": 0},
        {"type": "webhook", "url": "u", "max_backlog": 0},
        {"type": "webhook", "url": "u", "max_backoff_s": 120},  # a recovered sink must be retried within the SLO
        {"type": "webhook", "url": "u", "name": "has space"},
        {"type": "webhook", "url": "u", "unknown": 1},  # extra=forbid
    ],
)
def test_invalid_sinks_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        _settings(bad)


def test_explicit_names_win_and_fifo_names_keep_their_suffix() -> None:
    fifo = SqsSink(type="sqs", queue_url="https://sqs.us-east-1.amazonaws.com/1/usage.fifo")
    assert default_name(fifo) == "sqs:usage.fifo"
    s = _settings(
        {"type": "webhook", "url": "https://h.example/a", "name": "a"},
        {"type": "webhook", "url": "https://h.example/b", "name": "b"},
    )
    assert sink_names(s.events) == ["a", "b"]

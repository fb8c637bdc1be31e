"""Issue 9 through the running gateway: requests served by a real gateway (cache on, several outcomes) produce one
usage event each on an SQS queue and on an SNS topic (delivered to a subscribed queue), matching the ledger field for
field; /admin/events reports the sinks."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from aigw.config import parse_settings
from tests.events.helpers import FAST, QueueReader, expected_event
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.ledger import wait_for_ledger
from tests.support.moto import REGION, Moto

CHAT = "/v1/chat/completions"


def test_every_request_becomes_one_event_on_each_sink(moto_server: Moto, sqlite_url: str) -> None:
    queue = moto_server.queue()
    topic, topic_queue = moto_server.topic_with_queue()
    with FakeOpenAI() as oai:
        config: dict[str, Any] = {
            "admin_key": ADMIN_KEY,
            "database_url": sqlite_url,
            "usage": {"flush_interval_s": 0.05},
            "cache": {"enabled": True},
            "providers": [{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key}],
            "models": [{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
            "pricing": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}},
            "events": [
                {"type": "sqs", "name": "q", "queue_url": queue, "region": REGION,
                 "endpoint_url": moto_server.endpoint_url, **FAST},
                {"type": "sns", "name": "t", "topic_arn": topic, "region": REGION,
                 "endpoint_url": moto_server.endpoint_url, **FAST},
            ],
        }  # fmt: skip
        with RunningGateway(parse_settings(config, env={}), migrate=False) as gw:
            tenant = gw.new_tenant("events")
            auth = {"authorization": f"Bearer {tenant['api_key']}"}
            msg = [{"role": "user", "content": "hello events"}]
            sent = [
                httpx.post(gw.url + CHAT, json={"model": "gpt", "messages": msg, "temperature": 0}, headers=auth),
                httpx.post(gw.url + CHAT, json={"model": "gpt", "messages": msg, "temperature": 0}, headers=auth),
                httpx.post(gw.url + CHAT, json={"model": "gpt", "messages": msg, "stream": True}, headers=auth),
                httpx.post(gw.url + CHAT, json={"model": "nope", "messages": msg}, headers=auth),
            ]
            assert [r.status_code for r in sent] == [200, 200, 200, 404]
            assert [r.headers["x-aigw-cache"] for r in sent[:2]] == ["miss", "hit"]
            rows = {r["request_id"]: r for r in wait_for_ledger(gw, tenant["id"], len(sent))}
            assert set(rows) == {r.headers["x-request-id"] for r in sent}

            async def read(url: str) -> list[dict[str, Any]]:
                reader = QueueReader(moto_server, url)
                await reader.read_until(len(sent))
                return reader.events()

            for url in (queue, topic_queue):
                events = asyncio.run(read(url))
                by_id = {e["event_id"]: e for e in events}  # at-least-once: consumers dedupe on event_id
                assert Counter(e["request_id"] for e in by_id.values()) == Counter(set(rows))
                for e in by_id.values():
                    want = expected_event(rows[e["request_id"]])
                    assert {k: e[k] for k in want} == want, e
                assert {e["request_id"]: e["cache"] for e in by_id.values()} == {
                    r.headers["x-request-id"]: c for r, c in zip(sent, ["miss", "hit", "bypass", "bypass"], strict=True)
                }
            status = gw.admin("GET", "/admin/events")
            assert status.status_code == 200, status.text
            sinks = {s["name"]: s for s in status.json()["sinks"]}
            assert set(sinks) == {"q", "t"}

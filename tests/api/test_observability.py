"""Issue 7 end to end: a gateway configured by OTEL_* exports a SERVER span per request and a CLIENT span per
upstream attempt (fallbacks visible) to a real OTLP/HTTP receiver; the client's traceparent is continued and the
upstream receives the attempt's; /metrics shows the counters moving; x-aigw-overhead-ms is on responses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aigw.config import parse_settings
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.gateway import ADMIN_KEY, RunningGateway
from tests.support.otlp import OtlpHttpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
CHAT = "/v1/chat/completions"


@pytest.fixture
def capture() -> bool:
    """Overridden by parametrizing: message-content capture (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)."""
    return False


@pytest.fixture
def traced(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capture: bool
) -> Iterator[tuple[RunningGateway, FakeOpenAI, Any]]:
    with OtlpHttpReceiver() as otlp, FakeOpenAI() as oai:
        if capture:
            monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "aigw-test")
        config = {
            "admin_key": ADMIN_KEY,
            "database_url": sqlite_url,
            "usage": {"flush_interval_s": 0.05},
            "providers": [
                {"name": "dead", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"},
                {"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": oai.api_key},
            ],
            "models": [
                {
                    "name": "chain",
                    "targets": [
                        {"provider": "dead", "model": "gpt-4o-mini"},
                        {"provider": "oai", "model": "gpt-4o-mini"},
                    ],
                },
                {"name": "dead-only", "targets": [{"provider": "dead", "model": "gpt-4o-mini"}]},
            ],
            "pricing": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}},
        }
        with RunningGateway(parse_settings(config, env={}), migrate=False) as gw:
            yield gw, oai, otlp


def test_spans_per_attempt_with_genai_attributes_and_trace_context(
    traced: tuple[RunningGateway, FakeOpenAI, Any],
) -> None:
    gw, oai, otlp = traced
    key = gw.new_tenant("traced")["api_key"]
    headers = {"authorization": f"Bearer {key}", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    body = {"model": "chain", "max_tokens": 20, "temperature": 0.5, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gw.url + CHAT, json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-aigw-attempts"] == "2"
    assert float(r.headers["x-aigw-overhead-ms"]) >= 0

    tracing = gw.services.gateway.observer.tracing
    assert tracing is not None and tracing.force_flush()
    spans = otlp.wait_for(lambda s: len([x for x in s if x["trace_id"] == TRACE_ID]) >= 3)
    mine = [s for s in spans if s["trace_id"] == TRACE_ID]
    (server,) = [s for s in mine if s["kind"] == "SERVER"]
    clients = sorted((s for s in mine if s["kind"] == "CLIENT"), key=lambda s: s["attributes"]["aigw.provider"])
    assert server["parent_span_id"] == PARENT_ID, "the client's traceparent is continued"
    assert server["name"] == "POST /v1/chat/completions" and server["attributes"]["http.route"] == CHAT
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["aigw.tenant.id"] and server["attributes"]["aigw.cost_usd"] > 0
    assert [c["attributes"]["aigw.provider"] for c in clients] == ["dead", "oai"], "one span per attempt"
    for c in clients:
        assert c["parent_span_id"] == server["span_id"]
        a = c["attributes"]
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.request.max_tokens"] == 20
        assert a["gen_ai.request.temperature"] == 0.5 and a["server.address"] == "127.0.0.1"
    dead, ok = clients
    assert "error.type" in dead["attributes"]
    assert ok["attributes"]["gen_ai.usage.input_tokens"] > 0 and ok["attributes"]["gen_ai.response.model"]
    assert ok["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    # The upstream saw the attempt's own span as its parent.
    (seen,) = oai.requests
    assert seen.headers["traceparent"] == f"00-{TRACE_ID}-{ok['span_id']}-01"
    assert all("hi" not in str(v) for s in mine for v in s["attributes"].values()), "no message content"


def _trace(gw: RunningGateway, otlp: Any, trace_id: str, spans: int) -> list[dict[str, Any]]:
    tracing = gw.services.gateway.observer.tracing
    assert tracing is not None and tracing.force_flush()
    got = otlp.wait_for(lambda s: len([x for x in s if x["trace_id"] == trace_id]) >= spans)
    return [x for x in got if x["trace_id"] == trace_id]


def test_a_streamed_attempt_span_has_the_response_model_and_finish_reason(
    traced: tuple[RunningGateway, FakeOpenAI, Any],
) -> None:
    gw, _, otlp = traced
    key = gw.new_tenant("traced-stream")["api_key"]
    trace_id = "5" * 32
    headers = {"authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
    body = {"model": "chain", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gw.url + CHAT, json=body, headers=headers, timeout=10) as r:
        assert r.status_code == 200 and r.read().endswith(b"data: [DONE]\n\n")
    ok = next(s for s in _trace(gw, otlp, trace_id, 3) if s["attributes"].get("aigw.provider") == "oai")
    assert ok["attributes"]["gen_ai.response.model"]
    assert ok["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]


def test_server_span_status_a_4xx_is_not_an_error_and_a_5xx_keeps_its_precise_type(
    traced: tuple[RunningGateway, FakeOpenAI, Any],
) -> None:
    gw, _, otlp = traced
    key = gw.new_tenant("traced-limited", rate_limit_rpm=1)["api_key"]
    body = {"model": "chain", "messages": [{"role": "user", "content": "hi"}]}
    refused, failed = "6" * 32, "7" * 32
    auth = {"authorization": f"Bearer {key}"}
    assert httpx.post(gw.url + CHAT, json=body, headers=auth, timeout=10).status_code == 200
    limited = {**auth, "traceparent": f"00-{refused}-{PARENT_ID}-01"}
    assert httpx.post(gw.url + CHAT, json=body, headers=limited, timeout=10).status_code == 429
    (server,) = _trace(gw, otlp, refused, 1)
    assert server["status"] == "UNSET", "a refusal is the client's error, not the server's"
    assert server["attributes"]["http.response.status_code"] == 429 and server["attributes"]["error.type"]

    key2 = gw.new_tenant("traced-dead")["api_key"]
    dead = {"authorization": f"Bearer {key2}", "traceparent": f"00-{failed}-{PARENT_ID}-01"}
    r = httpx.post(gw.url + CHAT, json={**body, "model": "dead-only"}, headers=dead, timeout=10)
    assert r.status_code >= 500
    server = next(s for s in _trace(gw, otlp, failed, 2) if s["kind"] == "SERVER")
    assert server["status"] == "ERROR"
    assert server["attributes"]["error.type"] == r.json()["error"]["type"], "the gateway's type, not the status"


def _metric_samples(gw: RunningGateway) -> list[Sample]:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def test_metrics_endpoint_counts_requests_and_tokens(traced: tuple[RunningGateway, FakeOpenAI, Any]) -> None:
    gw, _, _ = traced
    tenant = gw.new_tenant("metered")
    body = {"model": "chain", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {tenant['api_key']}"}
    for _ in range(3):
        assert httpx.post(gw.url + CHAT, json=body, headers=auth, timeout=10).status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in _metric_samples(gw)}

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    assert total("aigw_requests_total", tenant=tenant["id"], status="200", provider="oai") == 3
    assert total("gen_ai_client_operation_duration_seconds_count", aigw_provider="dead") == 3
    assert total("gen_ai_client_token_usage_count", gen_ai_token_type="input") >= 3
    assert total("aigw_gateway_overhead_seconds_count") >= 3
    assert total("aigw_cost_usd_total", tenant=tenant["id"]) > 0


def test_requests_refused_before_a_tenant_is_known_are_counted_once(
    traced: tuple[RunningGateway, FakeOpenAI, Any],
) -> None:
    gw, _, _ = traced
    tenant = gw.new_tenant("refusals")
    good = {"authorization": f"Bearer {tenant['api_key']}"}
    body = {"model": "chain", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.url + CHAT, json=body, headers={"authorization": "Bearer gw-sk-nope"}).status_code == 401
    assert httpx.post(gw.url + CHAT, content=b"{not json", headers=good).status_code == 400
    assert httpx.post(gw.url + CHAT, json={**body, "model": "nope"}, headers=good).status_code == 404
    samples = [s for s in _metric_samples(gw) if s.name == "aigw_requests_total"]

    def count(tenant_id: str, status: str) -> float:
        return sum(s.value for s in samples if s.labels["tenant"] == tenant_id and s.labels["status"] == status)

    assert (count("", "401"), count("", "400")) == (1, 1)
    assert count(tenant["id"], "404") == 1, "a refusal the gateway metered is not counted a second time"
    assert count("", "404") == 0


def test_server_spans_are_named_by_route_template_never_by_raw_path(
    traced: tuple[RunningGateway, FakeOpenAI, Any],
) -> None:
    gw, _, otlp = traced
    tenant = gw.new_tenant("traced-routes")
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    cases = {"8" * 32: f"/admin/tenants/{tenant['id']}", "9" * 32: "/no/such/path/123"}
    for trace_id, path in cases.items():
        headers = {**admin, "traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
        httpx.get(gw.url + path, headers=headers, timeout=10)
    (found,) = _trace(gw, otlp, "8" * 32, 1)
    assert found["name"] == "GET /admin/tenants/{tenant_id}"
    assert found["attributes"]["http.route"] == "/admin/tenants/{tenant_id}"
    assert found["attributes"]["url.path"] == f"/admin/tenants/{tenant['id']}"
    (unknown,) = _trace(gw, otlp, "9" * 32, 1)
    assert unknown["name"] == "GET" and "http.route" not in unknown["attributes"]


@pytest.mark.parametrize("capture", [True])
@pytest.mark.parametrize("stream", [False, True])
def test_message_contents_on_attempt_spans_when_opted_in(
    traced: tuple[RunningGateway, FakeOpenAI, Any], stream: bool
) -> None:
    """With the standard opt-in, each attempt's span carries the request's messages and the answer it got."""
    gw, _, otlp = traced
    key = gw.new_tenant("traced-content")["api_key"]
    trace_id = ("a" if stream else "b") * 32
    headers = {"authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
    body = {"model": "chain", "stream": stream, "messages": [{"role": "user", "content": "the question"}]}
    with httpx.stream("POST", gw.url + CHAT, json=body, headers=headers, timeout=10) as r:
        assert r.status_code == 200
        text = r.read().decode()
    ok = next(s for s in _trace(gw, otlp, trace_id, 3) if s["attributes"].get("aigw.provider") == "oai")
    inputs = json.loads(ok["attributes"]["gen_ai.input.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "the question"}]}]
    (answer,) = json.loads(ok["attributes"]["gen_ai.output.messages"])
    said = answer["parts"][0]["content"]
    assert answer["role"] == "assistant" and said and answer["finish_reason"] == "stop"
    assert said in text or all(word in text for word in said.split()), "the answer the client got"

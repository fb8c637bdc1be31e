"""Tracing against a real OTLP receiver: spans, attributes, W3C context in and out, sampling, configuration."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from aigw.telemetry.tracing import Tracing, configure_tracing, set_response_attrs, set_server_status
from tests.support.otlp import OtlpGrpcReceiver, OtlpHttpReceiver, Record

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"


def _headers(flags: str = "01") -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"traceparent", f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-{flags}".encode()),
        (b"tracestate", b"vendor=abc"),
    ]


@pytest.fixture
def tracing(otlp: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracing]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "aigw-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # only force_flush sends: no timing in the tests
    t = configure_tracing(os.environ)
    assert t is not None
    yield t
    t.shutdown()


def _by_name(spans: list[Record], name: str) -> Record:
    [span] = [s for s in spans if s["name"] == name]
    return span


def _named(*names: str) -> Any:
    return lambda spans: {n for n in names} <= {s["name"] for s in spans}


def test_server_and_client_spans_carry_context_and_genai_attributes(tracing: Tracing, otlp: OtlpHttpReceiver) -> None:
    upstream_headers: dict[str, str] = {}
    with tracing.server_span("POST", "/v1/chat/completions", _headers()) as server:
        with tracing.client_span(
            operation="chat",
            provider_kind="bedrock",
            provider="bedrock-us",
            request_model="claude-3-haiku",
            server_address="bedrock-runtime.us-east-1.amazonaws.com",
            server_port=443,
            max_tokens=256,
            temperature=0.2,
        ) as client:
            tracing.inject(upstream_headers)
            set_response_attrs(
                client,
                response_model="claude-3-haiku-20240307",
                response_id="msg_01",
                finish_reasons=["stop"],
                input_tokens=12,
                output_tokens=34,
                error_type=None,
                cost_usd=Decimal("0.00012"),
                cache=None,
                tenant=None,
            )
        set_response_attrs(
            server,
            response_model=None,
            response_id=None,
            finish_reasons=None,
            input_tokens=12,
            output_tokens=34,
            error_type=None,
            cost_usd=Decimal("0.00012"),
            cache="miss",
            tenant="tenant-1",
        )
        set_server_status(server, 200)
    assert tracing.force_flush()
    spans = otlp.wait_for(_named("POST /v1/chat/completions", "chat claude-3-haiku"))

    srv = _by_name(spans, "POST /v1/chat/completions")
    cli = _by_name(spans, "chat claude-3-haiku")
    assert (srv["kind"], cli["kind"]) == ("SERVER", "CLIENT")
    # The client's trace is continued, and the upstream call hangs under our server span.
    assert srv["trace_id"] == cli["trace_id"] == INCOMING_TRACE
    assert srv["parent_span_id"] == INCOMING_SPAN
    assert cli["parent_span_id"] == srv["span_id"]
    # What goes upstream names the client span, so the provider's spans (if any) hang under it.
    assert upstream_headers["traceparent"] == f"00-{INCOMING_TRACE}-{cli['span_id']}-01"
    assert upstream_headers["tracestate"] == "vendor=abc"

    assert srv["attributes"] == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "url.path": "/v1/chat/completions",
        "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "aigw.cost_usd": pytest.approx(0.00012),
        "aigw.cache": "miss",
        "aigw.tenant.id": "tenant-1",
    }
    assert cli["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "aws.bedrock",
        "aigw.provider": "bedrock-us",
        "gen_ai.request.model": "claude-3-haiku",
        "server.address": "bedrock-runtime.us-east-1.amazonaws.com",
        "server.port": 443,
        "gen_ai.request.max_tokens": 256,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.model": "claude-3-haiku-20240307",
        "gen_ai.response.id": "msg_01",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "aigw.cost_usd": pytest.approx(0.00012),
    }
    assert srv["status"] == cli["status"] == "UNSET"
    assert srv["resource"]["service.name"] == "aigw-test"
    assert srv["resource"]["deployment.environment.name"] == "ci"
    assert srv["resource"]["service.instance.id"]


def test_without_traceparent_the_server_span_is_a_root(tracing: Tracing, otlp: OtlpHttpReceiver) -> None:
    outer = tracing.client_span(
        operation="chat", provider_kind="openai", provider="openai", request_model="outer",
        server_address=None, max_tokens=None, temperature=None,
    )  # fmt: skip
    # Even with some span current (e.g. in a background task), a request starts its own trace.
    with outer, tracing.server_span("POST", "/v1/embeddings", [(b"traceparent", b"garbage")]):
        pass
    tracing.force_flush()
    srv = _by_name(otlp.wait_for(_named("POST /v1/embeddings")), "POST /v1/embeddings")
    assert srv["parent_span_id"] == ""
    assert srv["trace_id"] != INCOMING_TRACE


class _Explodes:
    """Stands for values the caller would have to compute: touching it fails the test."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("attributes were computed for an unsampled span")


def test_unsampled_incoming_trace_records_nothing_and_still_propagates(
    tracing: Tracing, otlp: OtlpHttpReceiver
) -> None:
    upstream: dict[str, str] = {}
    with tracing.server_span("POST", "/v1/chat/completions", _headers(flags="00")) as server:
        assert not server.is_recording()
        with tracing.client_span(
            operation="chat", provider_kind="openai", provider="openai", request_model="unsampled",
            server_address="api.openai.com", max_tokens=1, temperature=None,
        ) as client:  # fmt: skip
            assert not client.is_recording()
            tracing.inject(upstream)
            set_response_attrs(
                client, response_model="m", response_id="r", finish_reasons=_Explodes(),  # type: ignore[arg-type]
                input_tokens=1, output_tokens=1, error_type=None, cost_usd=None, cache=None, tenant=None,
            )  # fmt: skip
    # The sampling decision travels on: same trace, "not sampled" flag.
    assert upstream["traceparent"].startswith(f"00-{INCOMING_TRACE}-")
    assert upstream["traceparent"].endswith("-00")
    # A sampled span after them: once it has arrived, anything exported before it would have too.
    with tracing.server_span("GET", "/marker", []):
        pass
    tracing.force_flush()
    spans = otlp.wait_for(_named("GET /marker"))
    assert [s["name"] for s in spans] == ["GET /marker"]


def test_sampler_from_env_is_honoured(otlp: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp.endpoint}/v1/traces")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    t = configure_tracing(os.environ)
    assert t is not None
    try:
        with t.server_span("POST", "/v1/chat/completions", _headers()) as span:
            assert not span.is_recording()
    finally:
        t.shutdown()


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio"])
def test_root_sampling_keeps_the_configured_ratio(
    sampler: str, otlp: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Roots are decided by the gateway (the SDK's span machinery is skipped for the unsampled ones): the decision
    must be the configured sampler's, on the span's own trace id, once (deciding twice would halve the ratio)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp.endpoint}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    t = configure_tracing(os.environ)
    assert t is not None
    bound = TraceIdRatioBased(0.5).bound
    seen: list[tuple[int, bool]] = []
    try:
        for _ in range(2000):
            with t.server_span("POST", None, [(b"content-type", b"application/json")]) as span:
                ctx = span.get_span_context()
                seen.append((ctx.trace_id, span.is_recording()))
                assert ctx.is_valid and ctx.trace_flags.sampled == span.is_recording()
    finally:
        t.shutdown()
    assert all(recording == (trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound) for trace_id, recording in seen)
    assert len({trace_id for trace_id, _ in seen}) == 2000, "every root its own trace"
    sampled = sum(recording for _, recording in seen)
    assert 900 <= sampled <= 1100, f"{sampled} of 2000 sampled at ratio 0.5"


def test_an_unsampled_root_still_propagates_its_trace(otlp: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp.endpoint}/v1/traces")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    t = configure_tracing(os.environ)
    assert t is not None
    upstream: dict[str, str] = {}
    try:
        with t.server_span("POST", None, []) as span:
            assert not span.is_recording()
            t.inject(upstream)
    finally:
        t.shutdown()
    ctx = span.get_span_context()
    # As the SDK would send it: this trace and span, not sampled, the W3C random-trace-id flag set.
    assert upstream["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-02"


def test_errors_are_typed_without_exception_messages(tracing: Tracing, otlp: OtlpHttpReceiver) -> None:
    class UpstreamTimeout(Exception):
        pass

    with pytest.raises(UpstreamTimeout), tracing.server_span("POST", "/v1/chat/completions", []) as server:
        try:
            with tracing.client_span(
                operation="chat", provider_kind="anthropic", provider="anthropic", request_model="claude",
                server_address="api.anthropic.com", max_tokens=None, temperature=None,
            ):  # fmt: skip
                raise UpstreamTimeout("upstream said: secret prompt text")
        finally:
            set_server_status(server, 504, error_type="upstream_timeout")
    tracing.force_flush()
    spans = otlp.wait_for(_named("POST /v1/chat/completions", "chat claude"))
    cli = _by_name(spans, "chat claude")
    srv = _by_name(spans, "POST /v1/chat/completions")
    assert cli["status"] == "ERROR"
    assert (
        cli["attributes"]["error.type"] == "test_errors_are_typed_without_exception_messages.<locals>.UpstreamTimeout"
    )
    assert cli["events"] == []  # no exception event: its message could quote a body
    assert srv["status"] == "ERROR"
    assert srv["attributes"]["error.type"] == "upstream_timeout"
    assert srv["attributes"]["http.response.status_code"] == 504
    assert "secret prompt text" not in json.dumps(spans)


def test_4xx_is_not_a_server_error(tracing: Tracing, otlp: OtlpHttpReceiver) -> None:
    with tracing.server_span("POST", "/v1/chat/completions", []) as server:
        set_server_status(server, 429)
    tracing.force_flush()
    srv = _by_name(otlp.wait_for(_named("POST /v1/chat/completions")), "POST /v1/chat/completions")
    assert srv["status"] == "UNSET"
    assert "error.type" not in srv["attributes"]


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
]


@pytest.mark.parametrize("enabled", [False, True])
def test_message_contents_only_when_enabled(
    enabled: bool, otlp: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
    if enabled:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    t = configure_tracing(os.environ)
    assert t is not None and t.capture_content is enabled
    try:
        with t.client_span(
            operation="chat", provider_kind="ollama", provider="local", request_model="llama3",
            server_address="127.0.0.1", max_tokens=None, temperature=None,
        ) as span:  # fmt: skip
            t.record_input_messages(span, MESSAGES)
            t.record_output_messages(
                span, [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]
            )
        t.force_flush()
        attrs = _by_name(otlp.wait_for(_named("chat llama3")), "chat llama3")["attributes"]
    finally:
        t.shutdown()
    assert attrs["gen_ai.provider.name"] == "ollama"
    if not enabled:
        assert "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs
        return
    assert json.loads(attrs["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "hi"}, {"type": "image_url"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]
    assert json.loads(attrs["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "ok"}], "finish_reason": "stop"}
    ]


def test_grpc_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpGrpcReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
        t = configure_tracing(os.environ)
        assert t is not None
        try:
            with t.server_span("POST", "/v1/chat/completions", _headers()):
                pass
            assert t.force_flush()
            [span] = rx.wait_for(lambda spans: len(spans) == 1)
        finally:
            t.shutdown()
    assert span["trace_id"] == INCOMING_TRACE
    assert span["resource"]["service.name"] == "aigw"  # our default when OTEL_SERVICE_NAME is unset


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "aigw"},  # naming the service does not turn export on
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_METRICS_EXPORTER": "otlp"},  # metrics only
    ],
)
def test_off_unless_configured(env: dict[str, str]) -> None:
    assert configure_tracing(env) is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces", "OTEL_METRICS_EXPORTER": "none"},
    ],
)
def test_on_when_configured(env: dict[str, str]) -> None:
    t = configure_tracing(env)
    assert t is not None
    t.shutdown()  # nothing recorded, so nothing is sent


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
)
def test_unsupported_settings_fail_loudly(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        configure_tracing(env)

"""The same measurements as :mod:`aigw.telemetry.metrics`, recorded into OTel instruments and exported over OTLP by a
PeriodicExportingMetricReader. Built only when ``OTEL_METRICS_EXPORTER`` or an OTLP endpoint asks for it: an OTel
histogram record costs several times a prometheus_client one, so nobody pays for it unasked.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter, PeriodicExportingMetricReader

from aigw.telemetry import otel_env, semconv


def _exporter(name: str, environ: Mapping[str, str]) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    # The exporters read their endpoint, headers, timeout, compression and temporality from OTEL_* themselves.
    if otel_env.protocol("metrics", environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()


class OtelMetrics:
    """OTel instruments for the Prometheus ones, under OTel names and attribute keys: the ``gen_ai.*`` instruments
    follow the GenAI conventions, the ``aigw.*`` ones their own keys (``aigw.tenant.id``,
    ``http.response.status_code``). Converted to Prometheus by a collector they are not the same series as
    ``GET /metrics``, which stays the reference for the dashboard.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        # The reader reads OTEL_METRIC_EXPORT_INTERVAL / _TIMEOUT itself.
        readers = [PeriodicExportingMetricReader(_exporter(n, environ)) for n in otel_env.exporters("metrics", environ)]
        self.provider = MeterProvider(metric_readers=readers, resource=otel_env.resource())
        meter = self.provider.get_meter("aigw")
        durations = list(semconv.DURATION_BUCKETS)
        self._tokens = meter.create_histogram(
            semconv.TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(semconv.TOKEN_BUCKETS),
        )
        self._op_duration = meter.create_histogram(
            semconv.OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=durations,
        )
        self._ttfc = meter.create_histogram(
            semconv.TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=durations,
        )
        self._requests = meter.create_counter("aigw.requests", unit="{request}", description="Requests served.")
        self._duration = meter.create_histogram(
            "aigw.request.duration",
            unit="s",
            description="Time from receiving a request to its last byte.",
            explicit_bucket_boundaries_advisory=durations,
        )
        self._overhead = meter.create_histogram(
            "aigw.gateway.overhead",
            unit="s",
            description="Time spent in the gateway itself, upstream excluded.",
            explicit_bucket_boundaries_advisory=list(semconv.OVERHEAD_BUCKETS),
        )
        self._cost = meter.create_counter("aigw.cost", unit="USD", description="Cost of served requests.")
        self._rejections = meter.create_counter(
            "aigw.ratelimit.rejections", unit="{request}", description="Requests rejected by a limit."
        )
        self._cache = meter.create_counter("aigw.cache.lookups", unit="{lookup}", description="Response cache lookups.")
        self._transitions = meter.create_counter(
            "aigw.breaker.transitions", unit="{transition}", description="Circuit breaker state changes."
        )
        self._breaker = meter.create_gauge(
            "aigw.breaker.state", unit="1", description="Breaker state: 0 closed, 1 half_open, 2 open."
        )
        self._queue_depth = meter.create_gauge(
            "aigw.usage.queue.depth", unit="{record}", description="Usage records waiting to be written."
        )
        self._dropped = meter.create_counter(
            "aigw.usage.dropped", unit="{record}", description="Usage records dropped because the queue was full."
        )

    def request_done(
        self,
        tenant: str,
        model: str,
        provider: str | None,
        status: int,
        cache: str,
        stream: bool,
        duration_s: float,
        overhead_s: float,
        cost_usd: Decimal | None,
    ) -> None:
        attrs: dict[str, Any] = {"aigw.tenant.id": tenant, "aigw.model": model, "http.response.status_code": status}
        if provider is not None:
            attrs["aigw.provider"] = provider
        self._requests.add(1, {**attrs, "aigw.cache": cache, "aigw.stream": stream})
        self._duration.record(duration_s, {"aigw.model": model, "aigw.stream": stream})
        self._overhead.record(overhead_s, {"aigw.stream": stream, "aigw.cache": cache})
        if cost_usd:
            self._cost.add(float(cost_usd), attrs)

    def upstream_attempt(
        self,
        operation: str,
        system: str,
        provider: str,
        request_model: str,
        response_model: str | None,
        duration_s: float,
        ttfc_s: float | None,
        error_type: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        attrs: dict[str, Any] = {
            semconv.OPERATION_NAME: operation,
            semconv.PROVIDER_NAME: system,
            semconv.AIGW_PROVIDER: provider,
            semconv.REQUEST_MODEL: request_model,
        }
        if response_model is not None:
            attrs[semconv.RESPONSE_MODEL] = response_model
        self._op_duration.record(duration_s, attrs if error_type is None else {**attrs, semconv.ERROR_TYPE: error_type})
        if ttfc_s is not None:
            self._ttfc.record(ttfc_s, attrs)
        if input_tokens is not None:
            self._tokens.record(input_tokens, {**attrs, semconv.TOKEN_TYPE: "input"})
        if output_tokens is not None:
            self._tokens.record(output_tokens, {**attrs, semconv.TOKEN_TYPE: "output"})

    def rejected(self, tenant: str, reason: str) -> None:
        self._rejections.add(1, {"aigw.tenant.id": tenant, "aigw.reason": reason})

    def cache_lookup(self, result: str) -> None:
        self._cache.add(1, {"aigw.cache": result})

    def breaker_transition(self, target: str, state: str, level: float) -> None:
        self._transitions.add(1, {"aigw.target": target, "aigw.breaker.state": state})
        self._breaker.set(level, {"aigw.target": target})

    def usage_queue(self, depth: int, dropped_delta: int) -> None:
        self._queue_depth.set(depth)
        if dropped_delta:
            self._dropped.add(dropped_delta)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()
